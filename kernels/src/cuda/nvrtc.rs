//! NVRTC, NVIDIA's run-time CUDA C compiler, opened as a shared library when it is asked for.
//!
//! Where from: the file named by `DEEPSEEK_LSP_NVRTC`, else the loader's search path
//! (`libnvrtc.so.13`, `.so.12`, `.so`). The PyPI package `nvidia-cuda-nvrtc-cu12` ships the
//! library alone and needs no GPU, which is how CI checks that our kernels compile.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;

use libloading::{Library, Symbol};

use super::library::{candidates, open_first};

/// The variable that names the NVRTC library file to open.
pub const LIBRARY_VARIABLE: &str = "DEEPSEEK_LSP_NVRTC";

const LIBRARY_NAMES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

/// Why a compilation did not give PTX.
#[derive(Debug)]
pub enum NvrtcError {
    /// The library could not be opened (or lacks a function we call).
    Unavailable(String),
    /// The source did not compile: NVRTC's log, which names the file and line.
    Compile { program: String, log: String },
    /// Any other failing call, with NVRTC's own words for it.
    Call {
        function: &'static str,
        message: String,
    },
}

impl std::fmt::Display for NvrtcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "NVRTC is not available: {why}"),
            Self::Compile { program, log } => write!(f, "{program} does not compile:\n{log}"),
            Self::Call { function, message } => write!(f, "{function} failed: {message}"),
        }
    }
}

impl std::error::Error for NvrtcError {}

type Program = *mut c_void;
type Status = c_int;

/// An opened NVRTC library.
pub struct Nvrtc {
    library: Library,
    path: String,
}

impl Nvrtc {
    /// Opens NVRTC (see the module's documentation for where it is looked for).
    pub fn open() -> Result<Self, NvrtcError> {
        Self::open_first(&candidates(LIBRARY_VARIABLE, LIBRARY_NAMES))
    }

    /// Opens the NVRTC library file at `path`.
    pub fn open_at(path: &Path) -> Result<Self, NvrtcError> {
        Self::open_first(&[path.display().to_string()])
    }

    fn open_first(candidates: &[String]) -> Result<Self, NvrtcError> {
        let (library, path) = open_first(candidates).map_err(|failures| {
            NvrtcError::Unavailable(format!(
                "{failures} (set {LIBRARY_VARIABLE} to the library's path)"
            ))
        })?;
        let nvrtc = Self { library, path };
        // Every function we call must be there before we say it is usable.
        nvrtc.version()?;
        Ok(nvrtc)
    }

    /// Where the library was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// NVRTC's (major, minor) version.
    pub fn version(&self) -> Result<(i32, i32), NvrtcError> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: nvrtcVersion writes two ints through valid pointers.
        let status = unsafe {
            let version: Symbol<unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status> =
                self.symbol(b"nvrtcVersion\0")?;
            version(&mut major, &mut minor)
        };
        self.check(status, "nvrtcVersion")?;
        Ok((major, minor))
    }

    /// Compiles `source` (named `program` in messages) with `options` ("-arch=compute_90",
    /// "-DKV_LORA=512"...) to PTX text.
    pub fn compile_ptx(
        &self,
        source: &str,
        program: &str,
        options: &[String],
    ) -> Result<String, NvrtcError> {
        let text = CString::new(source).map_err(|_| NvrtcError::Compile {
            program: program.to_string(),
            log: "the source holds a NUL byte".to_string(),
        })?;
        let name = CString::new(program).unwrap_or_default();
        let options: Vec<CString> = options
            .iter()
            .map(|option| CString::new(option.as_str()).unwrap_or_default())
            .collect();
        let option_pointers: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let mut handle: Program = std::ptr::null_mut();
        // SAFETY: the signatures are NVRTC's (nvrtc.h, stable since CUDA 7); every pointer
        // passed is valid for the call, and the program is destroyed on every path below.
        unsafe {
            let create: Symbol<
                unsafe extern "C" fn(
                    *mut Program,
                    *const c_char,
                    *const c_char,
                    c_int,
                    *const *const c_char,
                    *const *const c_char,
                ) -> Status,
            > = self.symbol(b"nvrtcCreateProgram\0")?;
            let status = create(
                &mut handle,
                text.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            );
            self.check(status, "nvrtcCreateProgram")?;
            let result = self.compile_created(handle, program, &option_pointers);
            let destroy: Symbol<unsafe extern "C" fn(*mut Program) -> Status> =
                self.symbol(b"nvrtcDestroyProgram\0")?;
            destroy(&mut handle);
            result
        }
    }

    /// Compiles a created program and reads its PTX (or its log).
    ///
    /// # Safety
    /// `handle` must be a live program of this library.
    unsafe fn compile_created(
        &self,
        handle: Program,
        program: &str,
        options: &[*const c_char],
    ) -> Result<String, NvrtcError> {
        // SAFETY: the caller's promise on `handle`; sizes come from NVRTC before each read.
        unsafe {
            let compile: Symbol<
                unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
            > = self.symbol(b"nvrtcCompileProgram\0")?;
            let status = compile(handle, options.len() as c_int, options.as_ptr());
            if status != 0 {
                let log = self
                    .read_text(handle, b"nvrtcGetProgramLogSize\0", b"nvrtcGetProgramLog\0")
                    .unwrap_or_else(|error| error.to_string());
                return Err(NvrtcError::Compile {
                    program: program.to_string(),
                    log: format!("{}\n{log}", self.message(status)),
                });
            }
            self.read_text(handle, b"nvrtcGetPTXSize\0", b"nvrtcGetPTX\0")
        }
    }

    /// A program's text through a (size, copy) pair of functions.
    ///
    /// # Safety
    /// `handle` must be a live program of this library.
    unsafe fn read_text(
        &self,
        handle: Program,
        size_function: &[u8],
        copy_function: &'static [u8],
    ) -> Result<String, NvrtcError> {
        let name = function_name(copy_function);
        // SAFETY: the caller's promise; the buffer is as long as NVRTC said.
        unsafe {
            let size_of: Symbol<unsafe extern "C" fn(Program, *mut usize) -> Status> =
                self.symbol(size_function)?;
            let mut size = 0usize;
            self.check(size_of(handle, &mut size), name)?;
            let mut buffer = vec![0u8; size.max(1)];
            let copy: Symbol<unsafe extern "C" fn(Program, *mut c_char) -> Status> =
                self.symbol(copy_function)?;
            self.check(copy(handle, buffer.as_mut_ptr().cast()), name)?;
            let text = CStr::from_bytes_until_nul(&buffer)
                .map(|text| text.to_string_lossy().into_owned())
                .unwrap_or_else(|_| String::from_utf8_lossy(&buffer).into_owned());
            Ok(text)
        }
    }

    /// # Safety
    /// `T` must be the function's true signature.
    unsafe fn symbol<T>(&self, name: &[u8]) -> Result<Symbol<'_, T>, NvrtcError> {
        // SAFETY: the caller's promise.
        unsafe { self.library.get(name) }.map_err(|error| {
            NvrtcError::Unavailable(format!(
                "{} has no {}: {error}",
                self.path,
                String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name))
            ))
        })
    }

    fn check(&self, status: Status, function: &'static str) -> Result<(), NvrtcError> {
        if status == 0 {
            return Ok(());
        }
        Err(NvrtcError::Call {
            function,
            message: self.message(status),
        })
    }

    /// NVRTC's description of a status code.
    fn message(&self, status: Status) -> String {
        // SAFETY: nvrtcGetErrorString returns a static C string for any status.
        unsafe {
            match self
                .symbol::<unsafe extern "C" fn(Status) -> *const c_char>(b"nvrtcGetErrorString\0")
            {
                Ok(describe) => {
                    let text = describe(status);
                    if text.is_null() {
                        format!("status {status}")
                    } else {
                        CStr::from_ptr(text).to_string_lossy().into_owned()
                    }
                }
                Err(_) => format!("status {status}"),
            }
        }
    }
}

fn function_name(symbol: &'static [u8]) -> &'static str {
    std::str::from_utf8(symbol.strip_suffix(b"\0").unwrap_or(symbol)).unwrap_or("nvrtc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clear_error_not_a_panic() {
        let missing = std::env::temp_dir().join("no-such-libnvrtc.so");
        let result = with_variable(&missing, Nvrtc::open);
        let Err(NvrtcError::Unavailable(message)) = result else {
            panic!("opened a library that does not exist");
        };
        assert!(message.contains("no-such-libnvrtc.so"), "{message}");
        assert!(message.contains(LIBRARY_VARIABLE), "{message}");
    }

    fn with_variable<T>(path: &std::path::Path, f: impl FnOnce() -> T) -> T {
        let before = std::env::var_os(LIBRARY_VARIABLE);
        // SAFETY: unit tests of this module are the only readers of this variable, and this is
        // its only test that sets it.
        unsafe { std::env::set_var(LIBRARY_VARIABLE, path) };
        let result = f();
        match before {
            // SAFETY: as above.
            Some(value) => unsafe { std::env::set_var(LIBRARY_VARIABLE, value) },
            // SAFETY: as above.
            None => unsafe { std::env::remove_var(LIBRARY_VARIABLE) },
        }
        result
    }
}
