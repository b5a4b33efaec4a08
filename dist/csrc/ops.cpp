// The op counter behind TAILOR_PROFILE's "ops per step": a global RecordFunction observer (the
// hook torch.profiler uses) that counts the aten ops the host dispatches, forward and backward.
// Only top-level calls count (an op called from inside another, like `mm` inside `linear`, is
// part of its caller), so the number is what the training code and autograd ask libtorch for:
// on a GPU, close to the kernel launches a step pays host time for.
#include <ATen/record_function.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

namespace {

std::atomic<uint64_t> ops{0};
thread_local int depth = 0;

std::unique_ptr<at::ObserverContext> enter(const at::RecordFunction&) {
  if (depth++ == 0) {
    ops.fetch_add(1, std::memory_order_relaxed);
  }
  return nullptr;
}

void leave(const at::RecordFunction&, at::ObserverContext*) { --depth; }

}  // namespace

extern "C" {

// Installs the observer (once; later calls do nothing). Returns 0, or 1 with *err set.
int tailor_ops_install(char** err) {
  static std::once_flag once;
  try {
    std::call_once(once, [] {
      at::addGlobalCallback(at::RecordFunctionCallback(enter, leave)
                                .scopes({at::RecordScope::FUNCTION})
                                .needsInputs(false)
                                .needsOutputs(false)
                                .needsIds(false));
    });
    return 0;
  } catch (const std::exception& e) {
    *err = strdup(e.what());
    return 1;
  }
}

// Top-level ops dispatched since the observer was installed, on every thread.
uint64_t tailor_ops_count() { return ops.load(std::memory_order_relaxed); }

}  // extern "C"
