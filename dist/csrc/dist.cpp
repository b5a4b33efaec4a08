// tailor's bridge to torch.distributed's c10d, compiled against the headers of the libtorch the
// trainer links (tch's). c10d has no C API, so this file is the smallest one tailor needs: a
// TCPStore rendezvous, a process group, and the collectives the trainer uses. Every entry point
// catches C++ exceptions and returns them as text: nothing unwinds into Rust.
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

char* copy_error(const std::string& what) {
  char* out = static_cast<char*>(std::malloc(what.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, what.c_str(), what.size() + 1);
  }
  return out;
}

template <typename F>
int guarded(char** err, F&& body) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    *err = copy_error(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_error(e.what());
  } catch (...) {
    *err = copy_error("unknown C++ exception");
  }
  return 1;
}

// A listening socket on `addr`:`port` alone (c10d's own server would listen on every address of
// the host). Handed to the TCPStore, which owns it from then on.
int listen_on(const std::string& addr, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string where = addr + ":" + std::to_string(port);
  int rc = getaddrinfo(addr.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (rc != 0) {
    throw std::runtime_error("resolving the rendezvous address " + where + ": " + gai_strerror(rc));
  }
  std::string last = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last = std::strerror(errno);
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0) {
      freeaddrinfo(found);
      return fd;
    }
    last = std::strerror(errno);
    close(fd);
  }
  freeaddrinfo(found);
  throw std::runtime_error("listening for the rendezvous on " + where + ": " + last);
}

}  // namespace

extern "C" {

// Joins the group of `world` ranks whose TCPStore rank 0 serves on master_addr:port, under
// `prefix` (one per restart of the group, so keys of an earlier group are never read). `host`,
// when not empty, is the address this rank's Gloo transport binds (the pod IP); `listen_addr`
// the one rank 0's TCPStore listens on.
void* tailor_dist_new(const char* master_addr, uint16_t port, int rank, int world,
                      int64_t timeout_ms, const char* prefix, const char* host,
                      const char* listen_addr, char** err) {
  Group* group = nullptr;
  guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = rank == 0;
    opts.numWorkers = world;
    opts.waitWorkers = true;
    opts.timeout = timeout;
    if (opts.isServer) {
      opts.masterListenFd = listen_on(listen_addr, port);
    }
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), opts);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    if (host != nullptr && host[0] != '\0') {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    group = new Group{store, backend};
  });
  return group;
}

// Sums `tensor` (an at::Tensor*, as tch hands it over) in place across the group.
int tailor_dist_all_reduce_sum(void* g, void* tensor, char** err) {
  return guarded(err, [&] {
    auto* group = static_cast<Group*>(g);
    std::vector<at::Tensor> tensors{*static_cast<at::Tensor*>(tensor)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    auto work = group->backend->allreduce(tensors, opts);
    work->wait();
  });
}

// Overwrites `tensor` on every rank with rank `root`'s.
int tailor_dist_broadcast(void* g, void* tensor, int root, char** err) {
  return guarded(err, [&] {
    auto* group = static_cast<Group*>(g);
    std::vector<at::Tensor> tensors{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    auto work = group->backend->broadcast(tensors, opts);
    work->wait();
  });
}

int tailor_dist_barrier(void* g, char** err) {
  return guarded(err, [&] {
    auto* group = static_cast<Group*>(g);
    auto work = group->backend->barrier();
    work->wait();
  });
}

// Makes `grad` (an at::Tensor* of the parameter's shape, typically a view into one flat buffer)
// the parameter's `.grad`: autograd then accumulates into it in place, so every gradient of a
// step lands in the flat buffer (what DDP calls gradient_as_bucket_view).
int tailor_grad_set(void* param, void* grad, char** err) {
  return guarded(err, [&] {
    auto* p = static_cast<at::Tensor*>(param);
    auto* g = static_cast<at::Tensor*>(grad);
    TORCH_CHECK(p->sizes() == g->sizes(), "a gradient of shape ", g->sizes(),
                " for a parameter of shape ", p->sizes());
    TORCH_CHECK(p->scalar_type() == g->scalar_type() && p->device() == g->device(),
                "a gradient of another dtype or device than its parameter");
    p->mutable_grad() = *g;
  });
}

void tailor_dist_free(void* g) { delete static_cast<Group*>(g); }

void tailor_dist_free_error(char* err) { std::free(err); }

}  // extern "C"
