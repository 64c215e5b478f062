//! Stop strings matched across token boundaries: text that could still be the start of a stop
//! string is held back until the next token decides.

/// Filters a stream of text deltas.
pub struct StopStrings {
    stops: Vec<String>,
    /// Text received but not yet released (a possible beginning of a stop string).
    held: String,
}

/// What one delta produced.
#[derive(Debug, PartialEq, Eq)]
pub enum StopScan {
    /// Text safe to emit; no stop string yet.
    Continue(String),
    /// A stop string appeared: emit this text (everything before it) and stop.
    Stopped(String),
}

impl StopStrings {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> StopScan {
        self.held.push_str(delta);
        if let Some(position) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let before = self.held[..position].to_string();
            self.held.clear();
            return StopScan::Stopped(before);
        }
        let keep = self.longest_stop_prefix_at_end();
        let release = self.held.len() - keep;
        let text = self.held[..release].to_string();
        self.held.drain(..release);
        StopScan::Continue(text)
    }

    /// The text still held back, released when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Bytes at the end of `held` that begin some stop string (on a character boundary).
    fn longest_stop_prefix_at_end(&self) -> usize {
        let held = &self.held;
        self.stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len().min(held.len() + 1)).rev().find(|&n| {
                    held.is_char_boundary(held.len() - n)
                        && stop.is_char_boundary(n)
                        && held.ends_with(&stop[..n])
                })
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut filter = StopStrings::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for delta in deltas {
            match filter.push(delta) {
                StopScan::Continue(text) => out.push_str(&text),
                StopScan::Stopped(text) => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&filter.finish());
        (out, false)
    }

    #[test]
    fn a_stop_string_split_over_three_deltas_is_found() {
        assert_eq!(
            run(&["\n\n"], &["let x = 1;", "\n", "\nfn"]),
            ("let x = 1;".into(), true)
        );
        assert_eq!(run(&["</end>"], &["a</", "en", "d>b"]), ("a".into(), true));
    }

    #[test]
    fn held_text_is_released_when_it_turns_out_not_to_stop() {
        assert_eq!(run(&["</end>"], &["a</", "x"]), ("a</x".into(), false));
        assert_eq!(run(&["\n\n"], &["a\n"]), ("a\n".into(), false));
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        assert_eq!(
            run(&["world", "lo"], &["hello world"]),
            ("hel".into(), true)
        );
    }

    #[test]
    fn multi_byte_text_is_never_cut_inside_a_character() {
        assert_eq!(run(&["éa"], &["xé", "é", "b"]), ("xééb".into(), false));
        assert_eq!(run(&["éa"], &["xé", "a"]), ("x".into(), true));
    }
}
