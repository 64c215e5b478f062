//! The CUDA driver API, opened as a shared library (`libcuda.so.1`, which the NVIDIA driver
//! installs) when a GPU is asked for: enough of it to load our kernels' PTX, move buffers and
//! launch. Nothing is linked at build time, so a binary built on a machine without CUDA runs our
//! kernels on one that has a GPU, and says why not on one that has none.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};

use libloading::{Library, Symbol};

use super::launch_shapes::LaunchShape;
use super::library::{candidates, open_first};

/// The variable that names the driver library file to open.
pub const LIBRARY_VARIABLE: &str = "DEEPSEEK_LSP_LIBCUDA";

const LIBRARY_NAMES: &[&str] = &["libcuda.so.1", "libcuda.so"];

type Status = c_int;
type Device = c_int;
type Context = *mut c_void;
type Module = *mut c_void;
type Function = *mut c_void;
type DevicePointer = u64;

const COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const COMPUTE_CAPABILITY_MINOR: c_int = 76;
const MULTIPROCESSOR_COUNT: c_int = 16;

/// Why a GPU operation failed.
#[derive(Debug)]
pub struct CudaError(pub String);

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CudaError {}

/// One GPU, its primary context current on the threads that call into it.
pub struct Gpu {
    library: Library,
    device: Device,
    context: Context,
    pub name: String,
    /// (major, minor) compute capability: (9, 0) for an H100/H200.
    pub compute_capability: (i32, i32),
    pub multiprocessors: usize,
}

// SAFETY: a CUDA context may be used from any thread once made current there, which every
// method does first.
unsafe impl Send for Gpu {}
// SAFETY: as above; the driver API is thread-safe.
unsafe impl Sync for Gpu {}

impl Gpu {
    /// GPU number `ordinal`, or why it cannot be used (no driver, no such GPU...).
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        Self::locate(&candidates(LIBRARY_VARIABLE, LIBRARY_NAMES), ordinal, true)
    }

    /// GPU number `ordinal` of the driver library at `library` (another driver than the
    /// system's: the GPU suite's emulated one, for instance).
    pub fn open_at(library: &std::path::Path, ordinal: usize) -> Result<Self, CudaError> {
        Self::locate(&[library.display().to_string()], ordinal, true)
    }

    /// GPU number `ordinal` as the driver describes it (name, compute capability), without
    /// taking a context on it: nothing is allocated on the GPU, and nothing can be run.
    pub fn probe(ordinal: usize) -> Result<Self, CudaError> {
        Self::locate(&candidates(LIBRARY_VARIABLE, LIBRARY_NAMES), ordinal, false)
    }

    fn locate(
        libraries: &[String],
        ordinal: usize,
        retain_context: bool,
    ) -> Result<Self, CudaError> {
        let (library, path) = open_library(libraries)?;
        let mut gpu = Self {
            library,
            device: 0,
            context: std::ptr::null_mut(),
            name: String::new(),
            compute_capability: (0, 0),
            multiprocessors: 0,
        };
        // SAFETY: each call is the driver function of that name with its documented signature
        // (cuda.h), given valid pointers.
        unsafe {
            let init: Symbol<unsafe extern "C" fn(c_uint) -> Status> = gpu.symbol(b"cuInit\0")?;
            gpu.check(init(0), &format!("cuInit ({path})"))?;
            let count: Symbol<unsafe extern "C" fn(*mut c_int) -> Status> =
                gpu.symbol(b"cuDeviceGetCount\0")?;
            let mut devices = 0;
            gpu.check(count(&mut devices), "cuDeviceGetCount")?;
            if ordinal >= devices as usize {
                return Err(CudaError(format!(
                    "no CUDA device {ordinal}: the driver sees {devices}"
                )));
            }
            let get: Symbol<unsafe extern "C" fn(*mut Device, c_int) -> Status> =
                gpu.symbol(b"cuDeviceGet\0")?;
            let mut device = 0;
            gpu.check(get(&mut device, ordinal as c_int), "cuDeviceGet")?;
            gpu.device = device;
            if retain_context {
                let retain: Symbol<unsafe extern "C" fn(*mut Context, Device) -> Status> =
                    gpu.symbol(b"cuDevicePrimaryCtxRetain\0")?;
                let mut context = std::ptr::null_mut();
                gpu.check(retain(&mut context, device), "cuDevicePrimaryCtxRetain")?;
                gpu.context = context;
            }
            let mut name = [0 as c_char; 256];
            let get_name: Symbol<unsafe extern "C" fn(*mut c_char, c_int, Device) -> Status> =
                gpu.symbol(b"cuDeviceGetName\0")?;
            gpu.check(
                get_name(name.as_mut_ptr(), name.len() as c_int, gpu.device),
                "cuDeviceGetName",
            )?;
            gpu.name = CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
        }
        gpu.compute_capability = (
            gpu.attribute(COMPUTE_CAPABILITY_MAJOR)?,
            gpu.attribute(COMPUTE_CAPABILITY_MINOR)?,
        );
        gpu.multiprocessors = gpu.attribute(MULTIPROCESSOR_COUNT)?.max(1) as usize;
        Ok(gpu)
    }

    /// The NVRTC architecture option for this GPU ("-arch=compute_90").
    pub fn arch_option(&self) -> String {
        let (major, minor) = self.compute_capability;
        format!("-arch=compute_{major}{minor}")
    }

    fn attribute(&self, attribute: c_int) -> Result<i32, CudaError> {
        let mut value = 0;
        // SAFETY: cuDeviceGetAttribute(int*, CUdevice_attribute, CUdevice).
        unsafe {
            let get: Symbol<unsafe extern "C" fn(*mut c_int, c_int, Device) -> Status> =
                self.symbol(b"cuDeviceGetAttribute\0")?;
            self.check(
                get(&mut value, attribute, self.device),
                "cuDeviceGetAttribute",
            )?;
        }
        Ok(value)
    }

    /// Makes this GPU's context current on the calling thread.
    fn current(&self) -> Result<(), CudaError> {
        if self.context.is_null() {
            return Err(CudaError(format!(
                "{} was only probed (Gpu::probe): open it to run on it",
                self.name
            )));
        }
        // SAFETY: cuCtxSetCurrent(CUcontext) with the context retained in `open`.
        unsafe {
            let set: Symbol<unsafe extern "C" fn(Context) -> Status> =
                self.symbol(b"cuCtxSetCurrent\0")?;
            self.check(set(self.context), "cuCtxSetCurrent")
        }
    }

    /// Loads PTX text and looks up `entry_points` in it.
    pub fn load(&self, ptx: &str, entry_points: &[&str]) -> Result<Kernels<'_>, CudaError> {
        self.current()?;
        let image = CString::new(ptx).map_err(|_| CudaError("PTX holds a NUL byte".into()))?;
        let mut module: Module = std::ptr::null_mut();
        // SAFETY: cuModuleLoadData(CUmodule*, const void*) with NUL-terminated PTX text;
        // cuModuleGetFunction(CUfunction*, CUmodule, const char*).
        unsafe {
            let load: Symbol<unsafe extern "C" fn(*mut Module, *const c_void) -> Status> =
                self.symbol(b"cuModuleLoadData\0")?;
            self.check(load(&mut module, image.as_ptr().cast()), "cuModuleLoadData")?;
            let get: Symbol<unsafe extern "C" fn(*mut Function, Module, *const c_char) -> Status> =
                self.symbol(b"cuModuleGetFunction\0")?;
            let mut functions = Vec::new();
            for entry in entry_points {
                let name = CString::new(*entry).unwrap_or_default();
                let mut function: Function = std::ptr::null_mut();
                self.check(
                    get(&mut function, module, name.as_ptr()),
                    &format!("cuModuleGetFunction({entry})"),
                )?;
                functions.push((entry.to_string(), function));
            }
            Ok(Kernels {
                gpu: self,
                module,
                functions,
            })
        }
    }

    /// A device buffer holding `values`.
    pub fn upload<T: Copy>(&self, values: &[T]) -> Result<Buffer<'_>, CudaError> {
        let bytes = std::mem::size_of_val(values);
        let buffer = self.alloc(bytes)?;
        // SAFETY: cuMemcpyHtoD_v2(CUdeviceptr, const void*, size_t) into a buffer of `bytes`.
        unsafe {
            let copy: Symbol<unsafe extern "C" fn(DevicePointer, *const c_void, usize) -> Status> =
                self.symbol(b"cuMemcpyHtoD_v2\0")?;
            self.check(
                copy(buffer.pointer, values.as_ptr().cast(), bytes),
                "cuMemcpyHtoD",
            )?;
        }
        Ok(buffer)
    }

    /// A device buffer of `bytes` (contents undefined).
    pub fn alloc(&self, bytes: usize) -> Result<Buffer<'_>, CudaError> {
        self.current()?;
        let mut pointer: DevicePointer = 0;
        // SAFETY: cuMemAlloc_v2(CUdeviceptr*, size_t).
        unsafe {
            let alloc: Symbol<unsafe extern "C" fn(*mut DevicePointer, usize) -> Status> =
                self.symbol(b"cuMemAlloc_v2\0")?;
            self.check(
                alloc(&mut pointer, bytes.max(1)),
                &format!("cuMemAlloc({bytes} bytes)"),
            )?;
        }
        Ok(Buffer {
            gpu: self,
            pointer,
            bytes,
        })
    }

    /// Waits for every launched kernel to finish; a kernel's fault surfaces here.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.current()?;
        // SAFETY: cuCtxSynchronize(void).
        unsafe {
            let sync: Symbol<unsafe extern "C" fn() -> Status> =
                self.symbol(b"cuCtxSynchronize\0")?;
            self.check(sync(), "cuCtxSynchronize")
        }
    }

    /// # Safety
    /// `T` must be the function's true signature.
    unsafe fn symbol<T>(&self, name: &[u8]) -> Result<Symbol<'_, T>, CudaError> {
        // SAFETY: the caller's promise.
        unsafe { self.library.get(name) }.map_err(|error| {
            CudaError(format!(
                "the CUDA driver has no {}: {error}",
                String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name))
            ))
        })
    }

    fn check(&self, status: Status, what: &str) -> Result<(), CudaError> {
        if status == 0 {
            return Ok(());
        }
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString(CUresult, const char**) gives a static string or fails.
        let described = unsafe {
            self.symbol::<unsafe extern "C" fn(Status, *mut *const c_char) -> Status>(
                b"cuGetErrorString\0",
            )
            .ok()
            .filter(|describe| describe(status, &mut text) == 0 && !text.is_null())
            .map(|_| CStr::from_ptr(text).to_string_lossy().into_owned())
        };
        Err(CudaError(format!(
            "{what} failed: {}",
            described.unwrap_or_else(|| format!("CUDA error {status}"))
        )))
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if self.context.is_null() {
            return;
        }
        // SAFETY: cuDevicePrimaryCtxRelease_v2(CUdevice) balances the retain in `open`.
        unsafe {
            if let Ok(release) = self
                .symbol::<unsafe extern "C" fn(Device) -> Status>(b"cuDevicePrimaryCtxRelease_v2\0")
            {
                release(self.device);
            }
        }
    }
}

/// Device memory, freed when dropped.
pub struct Buffer<'gpu> {
    gpu: &'gpu Gpu,
    pointer: DevicePointer,
    bytes: usize,
}

impl Buffer<'_> {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The whole buffer as values of `T` (after the kernels that write it have finished).
    pub fn download<T: Copy + Default>(&self) -> Result<Vec<T>, CudaError> {
        let mut values = vec![T::default(); self.bytes / std::mem::size_of::<T>()];
        self.gpu.current()?;
        // SAFETY: cuMemcpyDtoH_v2(void*, CUdeviceptr, size_t) into `values`, which holds at
        // most `bytes`.
        unsafe {
            let copy: Symbol<unsafe extern "C" fn(*mut c_void, DevicePointer, usize) -> Status> =
                self.gpu.symbol(b"cuMemcpyDtoH_v2\0")?;
            self.gpu.check(
                copy(
                    values.as_mut_ptr().cast(),
                    self.pointer,
                    std::mem::size_of_val(values.as_slice()),
                ),
                "cuMemcpyDtoH",
            )?;
        }
        Ok(values)
    }
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        if self.gpu.current().is_err() {
            return;
        }
        // SAFETY: cuMemFree_v2(CUdeviceptr) of memory this buffer allocated.
        unsafe {
            if let Ok(free) = self
                .gpu
                .symbol::<unsafe extern "C" fn(DevicePointer) -> Status>(b"cuMemFree_v2\0")
            {
                free(self.pointer);
            }
        }
    }
}

/// One argument of a kernel launch, in the kernel's parameter order.
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    Buffer(&'a Buffer<'a>),
    /// A null pointer, for a kernel's optional buffer.
    Null,
    I32(i32),
    F32(f32),
}

/// A loaded module's kernels.
pub struct Kernels<'gpu> {
    gpu: &'gpu Gpu,
    module: Module,
    functions: Vec<(String, Function)>,
}

impl Kernels<'_> {
    /// Launches `entry` with `args` (asynchronously: [`Gpu::synchronize`] waits for it).
    pub fn launch(&self, entry: &str, shape: LaunchShape, args: &[Arg]) -> Result<(), CudaError> {
        let function = self
            .functions
            .iter()
            .find(|(name, _)| name == entry)
            .map(|(_, function)| *function)
            .ok_or_else(|| CudaError(format!("no kernel {entry} was loaded")))?;
        self.gpu.current()?;
        // Each parameter's value lives here; the driver reads them through pointers.
        let mut values: Vec<[u8; 8]> = args
            .iter()
            .map(|arg| {
                let mut slot = [0u8; 8];
                match arg {
                    Arg::Buffer(buffer) => slot.copy_from_slice(&buffer.pointer.to_ne_bytes()),
                    Arg::Null => {}
                    Arg::I32(value) => slot[..4].copy_from_slice(&value.to_ne_bytes()),
                    Arg::F32(value) => slot[..4].copy_from_slice(&value.to_ne_bytes()),
                }
                slot
            })
            .collect();
        let mut pointers: Vec<*mut c_void> = values
            .iter_mut()
            .map(|slot| slot.as_mut_ptr().cast())
            .collect();
        let (x, y, z) = shape.grid;
        // SAFETY: cuLaunchKernel(CUfunction, grid x/y/z, block x/y/z, shared bytes, CUstream
        // (null: the default stream), void** params, void** extra); `pointers` holds one pointer
        // per kernel parameter, each to a value of the parameter's size, alive for the call.
        unsafe {
            type Launch = unsafe extern "C" fn(
                Function,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                *mut c_void,
                *mut *mut c_void,
                *mut *mut c_void,
            ) -> Status;
            let launch: Symbol<Launch> = self.gpu.symbol(b"cuLaunchKernel\0")?;
            self.gpu.check(
                launch(
                    function,
                    x,
                    y,
                    z,
                    shape.block,
                    1,
                    1,
                    shape.shared_bytes,
                    std::ptr::null_mut(),
                    pointers.as_mut_ptr(),
                    std::ptr::null_mut(),
                ),
                &format!("launching {entry} {shape:?}"),
            )
        }
    }
}

impl Drop for Kernels<'_> {
    fn drop(&mut self) {
        if self.gpu.current().is_err() {
            return;
        }
        // SAFETY: cuModuleUnload(CUmodule) of the module loaded in `Gpu::load`.
        unsafe {
            if let Ok(unload) = self
                .gpu
                .symbol::<unsafe extern "C" fn(Module) -> Status>(b"cuModuleUnload\0")
            {
                unload(self.module);
            }
        }
    }
}

fn open_library(candidates: &[String]) -> Result<(Library, String), CudaError> {
    open_first(candidates).map_err(|failures| {
        CudaError(format!(
            "no NVIDIA driver library ({failures}); is an NVIDIA GPU and its driver installed?"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_opening_a_gpu_is_a_clear_error() {
        let missing = std::env::temp_dir().join("no-such-libcuda.so.1");
        // SAFETY: this is the only test in this binary that reads or sets the variable.
        unsafe { std::env::set_var(LIBRARY_VARIABLE, &missing) };
        let result = Gpu::open(0);
        // SAFETY: as above.
        unsafe { std::env::remove_var(LIBRARY_VARIABLE) };
        let error = result.err().expect("no driver library, yet a GPU opened");
        assert!(
            error.to_string().contains("no-such-libcuda.so.1"),
            "{error}"
        );
        assert!(error.to_string().contains("NVIDIA"), "{error}");
    }
}
