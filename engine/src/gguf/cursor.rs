//! Little-endian reads from a byte slice that never run past its end: every read checks the
//! bytes left first and says what it was reading when they ran out.

/// A parse failure, described for the user (the caller adds the file name).
pub type ParseResult<T> = std::result::Result<T, String>;

pub struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    /// The next `len` bytes; `what` names them if the file ends first.
    pub fn take(&mut self, len: u64, what: &dyn Fn() -> String) -> ParseResult<&'a [u8]> {
        if len > self.remaining() as u64 {
            return Err(format!(
                "truncated: {} needs {len} bytes at offset {} but the file ends at {}",
                what(),
                self.position,
                self.bytes.len()
            ));
        }
        let start = self.position;
        self.position += len as usize;
        Ok(&self.bytes[start..self.position])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> ParseResult<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    pub fn u8(&mut self, what: &dyn Fn() -> String) -> ParseResult<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &dyn Fn() -> String) -> ParseResult<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &dyn Fn() -> String) -> ParseResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &dyn Fn() -> String) -> ParseResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub fn f32(&mut self, what: &dyn Fn() -> String) -> ParseResult<f32> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }

    pub fn f64(&mut self, what: &dyn Fn() -> String) -> ParseResult<f64> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: a u64 byte length, then that many bytes of UTF-8 (no terminator).
    pub fn string(&mut self, what: &dyn Fn() -> String) -> ParseResult<String> {
        let len = self.u64(&|| format!("the length of {}", what()))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("{} is not UTF-8: {e}", what()))
    }

    /// Checks that `count` items of at least `min_bytes` each can fit in what is left, before
    /// anything is allocated for them (a corrupt count must not become a huge allocation).
    pub fn check_count(
        &self,
        count: u64,
        min_bytes: u64,
        what: &dyn Fn() -> String,
    ) -> ParseResult<usize> {
        match count.checked_mul(min_bytes) {
            Some(total) if total <= self.remaining() as u64 => Ok(count as usize),
            _ => Err(format!(
                "{} claims {count} entries, more than the {} bytes left after offset {} can hold \
                 (truncated or corrupt)",
                what(),
                self.remaining(),
                self.position
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_little_endian_and_bounded() {
        let bytes = [1, 0, 0, 0, 2, 0];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.u32(&|| "a".into()).unwrap(), 1);
        let error = c.u32(&|| "the version".into()).unwrap_err();
        assert_eq!(
            error,
            "truncated: the version needs 4 bytes at offset 4 but the file ends at 6"
        );
    }

    #[test]
    fn strings_check_their_length_before_reading() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let error = Cursor::new(&bytes).string(&|| "key 1".into()).unwrap_err();
        assert!(
            error.starts_with("truncated: key 1 needs 18446744073709551615 bytes"),
            "{error}"
        );
        let mut invalid = 2u64.to_le_bytes().to_vec();
        invalid.extend_from_slice(&[0xff, 0xfe]);
        let error = Cursor::new(&invalid)
            .string(&|| "key 2".into())
            .unwrap_err();
        assert!(error.starts_with("key 2 is not UTF-8"), "{error}");
    }

    #[test]
    fn absurd_counts_are_refused_before_allocating() {
        let c = Cursor::new(&[0; 16]);
        assert_eq!(c.check_count(4, 4, &|| "x".into()), Ok(4));
        assert!(c.check_count(5, 4, &|| "x".into()).is_err());
        assert!(
            c.check_count(u64::MAX, 8, &|| "x".into()).is_err(),
            "overflow"
        );
    }
}
