//! The emulated CUDA driver (`cuda_on_cpu/`) reports what a GPU would refuse or what would be
//! wrong there, rather than running it quietly: these small kernels break one rule each.

mod support;

use std::process::Command;

use kernels::cuda::LaunchShape;
use kernels::cuda::driver::{Arg, Gpu, Kernels};
use kernels::cuda::nvrtc::{Nvrtc, NvrtcError};

const PROBES: &str = r#"
extern "C" __global__ void copy_neighbour(const int* in, int* out, int synchronise) {
    __shared__ int values[256];
    const int t = threadIdx.x;
    values[t] = in[t];
    if (synchronise) __syncthreads();
    out[t] = values[(t + 1) % blockDim.x];
}

extern "C" __global__ void shuffle_after_a_return(float* out) {
    if (threadIdx.x % 32 == 5) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

extern "C" __global__ void split_barriers(float* out) {
    if (threadIdx.x % 2) __syncthreads();
    else __syncwarp();
    out[threadIdx.x] = 1.0f;
}

extern "C" __global__ void __launch_bounds__(2 * 32, 1) bounded(float* out) {
    out[threadIdx.x] = 1.0f;
}

extern "C" __global__ void write_past_the_end(float* out, int count) {
    out[count + 64 + threadIdx.x] = 1.0f;
}
"#;

fn probes<'gpu>(gpu: &'gpu Gpu, nvrtc: &Nvrtc) -> Kernels<'gpu> {
    let ptx = nvrtc.compile_ptx(PROBES, "probes.cu", &[]).unwrap();
    gpu.load(
        &ptx,
        &[
            "copy_neighbour",
            "shuffle_after_a_return",
            "split_barriers",
            "bounded",
            "write_past_the_end",
        ],
    )
    .unwrap()
}

fn block(threads: u32) -> LaunchShape {
    LaunchShape {
        grid: (1, 1, 1),
        block: threads,
        shared_bytes: 0,
    }
}

#[test]
fn a_missing_barrier_shows_in_the_results() {
    let (gpu, nvrtc) = support::cuda_on_cpu::gpu_and_nvrtc();
    let kernels = probes(&gpu, &nvrtc);
    let run = |input: &[i32], synchronise: i32| {
        let (input, out) = (gpu.upload(input).unwrap(), gpu.alloc(256 * 4).unwrap());
        kernels
            .launch(
                "copy_neighbour",
                block(256),
                &[
                    Arg::Buffer(&input),
                    Arg::Buffer(&out),
                    Arg::I32(synchronise),
                ],
            )
            .unwrap();
        out.download::<i32>().unwrap()
    };
    let neighbours = |input: &[i32]| (0..256).map(|t| input[(t + 1) % 256]).collect::<Vec<_>>();
    let first: Vec<i32> = (0..256).map(|i| i * 7 + 1).collect();
    assert_eq!(run(&first, 1), neighbours(&first));
    // Without the barrier, threads that run before their neighbour read what the shared array
    // held before (here, the first launch's values).
    let second: Vec<i32> = (0..256).map(|i| -i).collect();
    let read = run(&second, 0);
    let wrong = read
        .iter()
        .zip(neighbours(&second))
        .filter(|(a, b)| **a != *b)
        .count();
    assert!(
        wrong > 0,
        "every thread read its neighbour's value without a barrier"
    );
}

/// Why launching probe `kernel` as `shape` (its one argument, a buffer of 96 floats) failed;
/// panics when it ran.
fn launch_failure(kernel: &str, shape: LaunchShape) -> String {
    let (gpu, nvrtc) = support::cuda_on_cpu::gpu_and_nvrtc();
    let kernels = probes(&gpu, &nvrtc);
    let out = gpu.alloc(96 * 4).unwrap();
    match kernels.launch(kernel, shape, &[Arg::Buffer(&out)]) {
        Ok(()) => panic!("{kernel} ran as {shape:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn a_full_mask_shuffle_after_lanes_returned_is_a_launch_failure() {
    let error = launch_failure("shuffle_after_a_return", block(64));
    assert!(error.contains("lanes of warp 0 returned"), "{error}");
}

#[test]
fn barriers_that_can_never_open_are_a_launch_failure() {
    let error = launch_failure("split_barriers", block(64));
    assert!(error.contains("can never open"), "{error}");
}

#[test]
fn launch_sizes_a_gpu_refuses_are_refused() {
    let refusals = [
        ("split_barriers", block(2048), "1 to 1024"),
        (
            "split_barriers",
            LaunchShape {
                grid: (1, 70_000, 1),
                ..block(32)
            },
            "up to 65535",
        ),
        (
            "split_barriers",
            LaunchShape {
                shared_bytes: 64 * 1024,
                ..block(32)
            },
            "48 KiB",
        ),
        // A kernel's __launch_bounds__ hold too (64 threads run, below).
        ("bounded", block(96), "__launch_bounds__ of 64"),
    ];
    for (kernel, shape, why) in refusals {
        let error = launch_failure(kernel, shape);
        assert!(error.contains(why), "{shape:?}: {error}");
    }
    let (gpu, nvrtc) = support::cuda_on_cpu::gpu_and_nvrtc();
    let out = gpu.alloc(64 * 4).unwrap();
    probes(&gpu, &nvrtc)
        .launch("bounded", block(64), &[Arg::Buffer(&out)])
        .unwrap();
}

#[test]
fn a_kernel_that_does_not_compile_gives_the_compilers_log_under_its_name() {
    let (_, nvrtc) = support::cuda_on_cpu::gpu_and_nvrtc();
    let broken = "extern \"C\" __global__ void broken(float* out) { out[0] = undefined_name; }";
    match nvrtc.compile_ptx(broken, "broken.cu", &[]) {
        Err(NvrtcError::Compile { program, log }) => {
            assert_eq!(program, "broken.cu");
            assert!(
                log.contains("broken.cu") && log.contains("undefined_name"),
                "{log}"
            );
        }
        other => panic!("a broken kernel compiled: {:?}", other.map(|_| ())),
    }
}

/// Run by the next test in a child process: writes past a buffer's end.
#[test]
#[ignore = "run by a_write_past_a_buffer_stops_the_run_naming_the_kernel in a child process"]
fn child_writes_past_a_buffer() {
    let (gpu, nvrtc) = support::cuda_on_cpu::gpu_and_nvrtc();
    let kernels = probes(&gpu, &nvrtc);
    let out = gpu.alloc(1000 * 4).unwrap();
    let _ = kernels.launch(
        "write_past_the_end",
        block(32),
        &[Arg::Buffer(&out), Arg::I32(1000)],
    );
}

#[test]
fn a_write_past_a_buffer_stops_the_run_naming_the_kernel() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_writes_past_a_buffer",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the child survived: {stderr}");
    assert!(
        stderr.contains("kernel write_past_the_end touched address"),
        "{stderr}"
    );
}
