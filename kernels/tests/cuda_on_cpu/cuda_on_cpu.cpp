// An emulated CUDA driver and NVRTC in one shared library, for `kernels::cuda`'s driver and
// NVRTC bindings to open in place of libcuda.so.1 and libnvrtc.so: our CUDA C kernels then run
// on the CPU (cuda_on_cpu.h says how), launched by the same Rust code that launches them on a
// GPU. Only the functions those bindings call are here.
//
// "Compiling" a program runs the C++ compiler on the kernel file (cuda_on_cpu.h first, the -D
// options kept) into a shared library, whose path stands in for the PTX; loading that "PTX"
// opens the library. Device memory is host memory, each buffer ending where an inaccessible page
// starts, so a kernel that reads or writes past a buffer's end (by more than the 256-byte
// granularity a GPU's allocations have too) stops with a message naming the kernel.
//
// Built by kernels/tests/support/cuda_on_cpu.rs with -DCUDA_ON_CPU_HEADER (the header's path)
// and -DCUDA_ON_CPU_WORKDIR (where kernel libraries go).

#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#ifndef CUDA_ON_CPU_HEADER
#error "CUDA_ON_CPU_HEADER must name cuda_on_cpu.h"
#endif
#ifndef CUDA_ON_CPU_WORKDIR
#error "CUDA_ON_CPU_WORKDIR must name a writable folder"
#endif

namespace {

// cuda.h's and nvrtc.h's codes for what can go wrong here.
constexpr int CUDA_SUCCESS = 0;
constexpr int CUDA_ERROR_INVALID_VALUE = 1;
constexpr int CUDA_ERROR_OUT_OF_MEMORY = 2;
constexpr int CUDA_ERROR_INVALID_DEVICE = 101;
constexpr int CUDA_ERROR_INVALID_IMAGE = 200;
constexpr int CUDA_ERROR_NOT_FOUND = 500;
constexpr int CUDA_ERROR_LAUNCH_FAILED = 719;
constexpr int NVRTC_SUCCESS = 0;
constexpr int NVRTC_ERROR_INVALID_INPUT = 3;
constexpr int NVRTC_ERROR_COMPILATION = 6;

// Attributes the bindings read, and what this "GPU" answers: compute 9.0, four multiprocessors
// (few, so that attention splits its keys and merges the splits).
constexpr int COMPUTE_CAPABILITY_MAJOR = 75;
constexpr int COMPUTE_CAPABILITY_MINOR = 76;
constexpr int MULTIPROCESSOR_COUNT = 16;

constexpr const char* MODULE_PREFIX = "cuda_on_cpu module: ";
constexpr const char* ENTRY_PREFIX = "cuda_on_cpu_launch_";

thread_local std::string last_error;

std::string read_file(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
}

// ---- device memory ------------------------------------------------------------------------

struct Allocation {
    char* map;
    size_t map_bytes;
    size_t bytes;
};

std::mutex memory_lock;
std::map<uint64_t, Allocation> allocations;  // by device pointer

// `bytes` placed so that the 256-byte rounded buffer ends where a PROT_NONE page starts.
uint64_t allocate(size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t rounded = (bytes + 255) / 256 * 256;
    const size_t data_pages = (rounded + page - 1) / page * page;
    const size_t map_bytes = data_pages + page;
    void* map = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                     0);
    if (map == MAP_FAILED) return 0;
    char* guard = static_cast<char*>(map) + data_pages;
    mprotect(guard, page, PROT_NONE);
    // Device memory starts as garbage: NaN bytes, so an unwritten output shows.
    char* start = guard - rounded;
    memset(start, 0xff, rounded);
    std::lock_guard<std::mutex> lock(memory_lock);
    allocations[(uint64_t)start] = Allocation{static_cast<char*>(map), map_bytes, bytes};
    return (uint64_t)start;
}

// Whether [pointer, pointer + bytes) lies in one allocation.
bool inside(uint64_t pointer, size_t bytes) {
    std::lock_guard<std::mutex> lock(memory_lock);
    auto next = allocations.upper_bound(pointer);
    if (next == allocations.begin()) return false;
    --next;
    return pointer + bytes <= next->first + next->second.bytes;
}

// ---- launches and faults ------------------------------------------------------------------

using EntryPoint = int (*)(const unsigned*, void**, char*, size_t);

struct Function {
    EntryPoint entry;
    std::string name;
};

struct Module {
    void* library;
};

thread_local const char* launching = nullptr;

void on_fault(int signal, siginfo_t* info, void*) {
    char message[512];
    const int length = snprintf(
        message, sizeof message,
        "\ncuda_on_cpu: kernel %s touched address %p outside every buffer (past a buffer's "
        "end?)\n",
        launching ? launching : "(none)", info ? info->si_addr : nullptr);
    if (length > 0) (void)!write(2, message, (size_t)length);
    ::signal(signal, SIG_DFL);
    raise(signal);
}

// ---- compiling kernel files ---------------------------------------------------------------

struct Program {
    std::string source;
    std::string name;
    std::string log;
    std::string image;
};

// `extern __shared__ T name[];` becomes a pointer to the launch's dynamic shared memory.
std::string with_dynamic_shared(std::string source) {
    const std::string marker = "extern __shared__";
    for (size_t at = source.find(marker); at != std::string::npos; at = source.find(marker, at)) {
        const size_t end = source.find(';', at);
        const size_t bracket = source.rfind('[', end);
        if (end == std::string::npos || bracket == std::string::npos || bracket < at) break;
        std::string declaration = source.substr(at + marker.size(), bracket - at - marker.size());
        const size_t name_start = declaration.find_last_of(" \t*") + 1;
        const std::string name = declaration.substr(name_start);
        const std::string type = declaration.substr(0, name_start);
        const std::string replacement =
            type + "* " + name + " = cuda_on_cpu::dynamic_shared<" + type + ">()";
        source.replace(at, end - at, replacement);
        at += replacement.size();
    }
    return source;
}

bool identifier_char(char c) { return isalnum((unsigned char)c) || c == '_'; }

// An `extern "C" __global__` function: its name, and its __launch_bounds__ expression (the
// most threads a block may have; "0" when it has none).
struct KernelEntry {
    std::string name;
    std::string most_threads = "0";
};

// The file's entry points.
std::vector<KernelEntry> entry_points(const std::string& source) {
    std::vector<KernelEntry> names;
    const std::string marker = "__global__";
    for (size_t at = source.find(marker); at != std::string::npos;
         at = source.find(marker, at + 1)) {
        size_t i = at + marker.size();
        std::string most_threads = "0";
        while (i < source.size()) {
            while (i < source.size() && isspace((unsigned char)source[i])) ++i;
            const size_t start = i;
            while (i < source.size() && identifier_char(source[i])) ++i;
            if (i == start) break;
            const std::string word = source.substr(start, i - start);
            size_t next = i;
            while (next < source.size() && isspace((unsigned char)source[next])) ++next;
            if (next < source.size() && source[next] == '(') {
                if (word != "__launch_bounds__") {
                    names.push_back(KernelEntry{word, most_threads});
                    break;
                }
                int depth = 0;
                for (i = next; i < source.size(); ++i) {
                    depth += source[i] == '(' ? 1 : source[i] == ')' ? -1 : 0;
                    if (depth == 0) {
                        ++i;
                        break;
                    }
                }
                // The first argument: up to a comma at depth one, else the whole.
                std::string bounds = source.substr(next + 1, i - next - 2);
                int level = 0;
                for (size_t c = 0; c < bounds.size(); ++c) {
                    level += bounds[c] == '(' ? 1 : bounds[c] == ')' ? -1 : 0;
                    if (bounds[c] == ',' && level == 0) {
                        bounds.resize(c);
                        break;
                    }
                }
                most_threads = "(" + bounds + ")";
            }
        }
    }
    return names;
}

// Runs `command` (its output to `log_path`), leaving its output in `program.log`, prefixed with
// the command when it fails.
bool run_logged(Program& program, const std::string& command, const std::string& log_path,
                const char* what) {
    const int status = system((command + " > '" + log_path + "' 2>&1").c_str());
    program.log = read_file(log_path);
    unlink(log_path.c_str());
    if (status != 0) program.log = std::string(what) + " (" + command + "):\n" + program.log;
    return status == 0;
}

// Paths of one compile's own files: tests compile the same kernels at once, in this process and
// in others.
std::string own_path(const std::string& name) {
    static std::atomic<unsigned> compiles{0};
    return std::string(CUDA_ON_CPU_WORKDIR) + "/" + name + "." + std::to_string(getpid()) + "." +
           std::to_string(compiles.fetch_add(1));
}

// The source with its macros expanded (line markers keep its own lines for errors), as NVRTC
// sees it: entry points a macro defines are found, and the emulator's header stays out of it.
bool preprocess(Program& program, const std::string& defines, std::string& expanded) {
    const std::string own = own_path(program.name);
    const std::string source_path = own + ".cu", out_path = own + ".i";
    std::ofstream(source_path) << "#line 1 \"" << program.name << "\"\n" << program.source;
    const bool done = run_logged(
        program, "c++ -E -x c++ -DCUDA_ON_CPU=1" + defines + " -o '" + out_path + "' '" +
                     source_path + "'",
        own + ".log", "the C++ preprocessor failed");
    unlink(source_path.c_str());
    if (done) expanded = read_file(out_path);
    unlink(out_path.c_str());
    return done;
}

int compile(Program& program, const std::vector<std::string>& options) {
    std::string defines;
    for (const std::string& option : options)
        if (option.rfind("-D", 0) == 0) defines += " '" + option + "'";
    // The same source, options, header and emulator make the same library: compiled once, even
    // across runs (a cached one needs no preprocessing either).
    static const std::string header = read_file(CUDA_ON_CPU_HEADER);
    static const std::string emulator = read_file(__FILE__);
    const size_t key = std::hash<std::string>{}(program.name + '\n' + program.source + defines +
                                                header + emulator);
    const std::string library = std::string(CUDA_ON_CPU_WORKDIR) + "/" + program.name + "-" +
                                std::to_string(key) + ".so";
    if (access(library.c_str(), R_OK) != 0) {
        std::string expanded;
        if (!preprocess(program, defines, expanded)) return NVRTC_ERROR_COMPILATION;
        std::string unit =
            "#include \"" CUDA_ON_CPU_HEADER "\"\n" + with_dynamic_shared(expanded) + "\n";
        for (const KernelEntry& entry : entry_points(expanded)) {
            unit += "extern \"C\" int " + std::string(ENTRY_PREFIX) + entry.name +
                    "(const unsigned* sizes, void** params, char* error, size_t error_bytes) {\n"
                    "    return cuda_on_cpu::launch(" +
                    entry.name + ", sizes, params, error, error_bytes, " + entry.most_threads +
                    ");\n}\n";
        }
        // The finished library is renamed into place whole.
        const std::string own = own_path(program.name);
        const std::string source_path = own + ".cpp", partial = own + ".so";
        std::ofstream(source_path) << unit;
        const bool done = run_logged(
            program,
            "c++ -std=c++17 -O2 -fPIC -shared -Wall -Wno-unknown-pragmas" + defines + " -o '" +
                partial + "' '" + source_path + "'",
            own + ".log", "the C++ compiler failed");
        unlink(source_path.c_str());
        if (!done) {
            unlink(partial.c_str());
            return NVRTC_ERROR_COMPILATION;
        }
        rename(partial.c_str(), library.c_str());
    }
    program.image = std::string(MODULE_PREFIX) + library;
    return NVRTC_SUCCESS;
}

int copy_text(const std::string& text, char* out) {
    memcpy(out, text.c_str(), text.size() + 1);
    return NVRTC_SUCCESS;
}

}  // namespace

extern "C" {

// ---- NVRTC --------------------------------------------------------------------------------

int nvrtcVersion(int* major, int* minor) {
    *major = 0;
    *minor = 0;
    return NVRTC_SUCCESS;
}

const char* nvrtcGetErrorString(int status) {
    switch (status) {
        case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
        case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
        case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION";
        default: return "an emulated NVRTC error";
    }
}

int nvrtcCreateProgram(void** handle, const char* source, const char* name, int, const char* const*,
                       const char* const*) {
    if (!handle || !source) return NVRTC_ERROR_INVALID_INPUT;
    *handle = new Program{source, name ? name : "program", "", ""};
    return NVRTC_SUCCESS;
}

int nvrtcDestroyProgram(void** handle) {
    delete static_cast<Program*>(*handle);
    *handle = nullptr;
    return NVRTC_SUCCESS;
}

int nvrtcCompileProgram(void* handle, int count, const char* const* options) {
    std::vector<std::string> list(options, options + count);
    return compile(*static_cast<Program*>(handle), list);
}

int nvrtcGetProgramLogSize(void* handle, size_t* size) {
    *size = static_cast<Program*>(handle)->log.size() + 1;
    return NVRTC_SUCCESS;
}

int nvrtcGetProgramLog(void* handle, char* log) {
    return copy_text(static_cast<Program*>(handle)->log, log);
}

int nvrtcGetPTXSize(void* handle, size_t* size) {
    *size = static_cast<Program*>(handle)->image.size() + 1;
    return NVRTC_SUCCESS;
}

int nvrtcGetPTX(void* handle, char* ptx) {
    return copy_text(static_cast<Program*>(handle)->image, ptx);
}

// ---- the driver ---------------------------------------------------------------------------

int cuInit(unsigned) { return CUDA_SUCCESS; }

int cuDeviceGetCount(int* count) {
    *count = 1;
    return CUDA_SUCCESS;
}

int cuDeviceGet(int* device, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *device = 0;
    return CUDA_SUCCESS;
}

int cuDeviceGetName(char* name, int length, int) {
    snprintf(name, (size_t)length, "CUDA on the CPU (cuda_on_cpu, emulated)");
    return CUDA_SUCCESS;
}

int cuDeviceGetAttribute(int* value, int attribute, int) {
    switch (attribute) {
        case COMPUTE_CAPABILITY_MAJOR: *value = 9; return CUDA_SUCCESS;
        case COMPUTE_CAPABILITY_MINOR: *value = 0; return CUDA_SUCCESS;
        case MULTIPROCESSOR_COUNT: *value = 4; return CUDA_SUCCESS;
        default: return CUDA_ERROR_INVALID_VALUE;
    }
}

int cuDevicePrimaryCtxRetain(void** context, int) {
    static int the_context;
    *context = &the_context;
    return CUDA_SUCCESS;
}

int cuDevicePrimaryCtxRelease_v2(int) { return CUDA_SUCCESS; }
int cuCtxSetCurrent(void*) { return CUDA_SUCCESS; }
// Launches run to their end before they return.
int cuCtxSynchronize() { return CUDA_SUCCESS; }

int cuGetErrorString(int status, const char** text) {
    switch (status) {
        case CUDA_ERROR_LAUNCH_FAILED: *text = last_error.c_str(); return CUDA_SUCCESS;
        case CUDA_ERROR_INVALID_VALUE: *text = "invalid value (emulated)"; return CUDA_SUCCESS;
        case CUDA_ERROR_OUT_OF_MEMORY: *text = "out of memory (emulated)"; return CUDA_SUCCESS;
        case CUDA_ERROR_INVALID_IMAGE: *text = last_error.c_str(); return CUDA_SUCCESS;
        case CUDA_ERROR_NOT_FOUND: *text = last_error.c_str(); return CUDA_SUCCESS;
        default: *text = "an emulated CUDA error"; return CUDA_SUCCESS;
    }
}

int cuMemAlloc_v2(uint64_t* pointer, size_t bytes) {
    *pointer = allocate(bytes);
    return *pointer ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

int cuMemFree_v2(uint64_t pointer) {
    std::lock_guard<std::mutex> lock(memory_lock);
    auto found = allocations.find(pointer);
    if (found == allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    munmap(found->second.map, found->second.map_bytes);
    allocations.erase(found);
    return CUDA_SUCCESS;
}

int cuMemcpyHtoD_v2(uint64_t destination, const void* source, size_t bytes) {
    if (!inside(destination, bytes)) return CUDA_ERROR_INVALID_VALUE;
    memcpy(reinterpret_cast<void*>(destination), source, bytes);
    return CUDA_SUCCESS;
}

int cuMemcpyDtoH_v2(void* destination, uint64_t source, size_t bytes) {
    if (!inside(source, bytes)) return CUDA_ERROR_INVALID_VALUE;
    memcpy(destination, reinterpret_cast<const void*>(source), bytes);
    return CUDA_SUCCESS;
}

int cuModuleLoadData(void** module, const void* image) {
    const std::string text = static_cast<const char*>(image);
    if (text.rfind(MODULE_PREFIX, 0) != 0) {
        last_error = "not a module of the emulated NVRTC (real PTX cannot run on the CPU)";
        return CUDA_ERROR_INVALID_IMAGE;
    }
    const std::string path = text.substr(strlen(MODULE_PREFIX));
    void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        last_error = dlerror();
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *module = new Module{library};
    return CUDA_SUCCESS;
}

int cuModuleGetFunction(void** function, void* module, const char* name) {
    const std::string symbol = std::string(ENTRY_PREFIX) + name;
    void* entry = dlsym(static_cast<Module*>(module)->library, symbol.c_str());
    if (!entry) {
        last_error = std::string("no kernel named ") + name;
        return CUDA_ERROR_NOT_FOUND;
    }
    *function = new Function{reinterpret_cast<EntryPoint>(entry), name};
    return CUDA_SUCCESS;
}

// The library stays open: a later load of the same kernels reuses it.
int cuModuleUnload(void* module) {
    delete static_cast<Module*>(module);
    return CUDA_SUCCESS;
}

int cuLaunchKernel(void* handle, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                   unsigned block_x, unsigned block_y, unsigned block_z, unsigned shared_bytes,
                   void*, void** params, void**) {
    const Function& function = *static_cast<Function*>(handle);
    const unsigned sizes[7] = {grid_x, grid_y, grid_z, block_x, block_y, block_z, shared_bytes};
    // A fault inside the kernel names it before the process stops.
    struct sigaction fault = {}, before_segv = {}, before_bus = {};
    fault.sa_sigaction = on_fault;
    fault.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &fault, &before_segv);
    sigaction(SIGBUS, &fault, &before_bus);
    launching = function.name.c_str();
    char error[1024] = "";
    const int status = function.entry(sizes, params, error, sizeof error);
    launching = nullptr;
    sigaction(SIGSEGV, &before_segv, nullptr);
    sigaction(SIGBUS, &before_bus, nullptr);
    if (status != 0) {
        last_error = "the emulated launch of " + function.name + " failed: " + error;
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    return CUDA_SUCCESS;
}

}  // extern "C"
