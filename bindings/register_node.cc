// omnirelay._core.Node: an in-process node (dispatcher, inbounds, outbounds,
// admin endpoints) driven from Python; see python/omnirelay/node.py.
//
// GIL discipline: start/stop/call release the GIL while C++ blocks. Python
// procedures run on a small pool of C++ worker threads that take the GIL
// only around the Python call itself, never on a transport thread (a slow
// Python handler must not stall the gRPC completion queues).
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include "bindings/registrations.h"
#include "bindings/status_conversion.h"
#include "omnirelay/config/config.h"
#include "omnirelay/node/node.h"

namespace py = pybind11;

namespace omnirelay::bindings {
namespace {

// Runs Python handlers off the transport threads.
class PythonPool {
 public:
  explicit PythonPool(int threads) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { Work(); });
  }
  ~PythonPool() { Stop(); }
  void Post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> workers_;
  bool stopping_ = false;
};

// Maps a Python exception to a status: OmniRelayError keeps its code,
// message and error code; anything else is Internal.
absl::Status StatusFromPython(py::error_already_set& error) {
  py::object value = error.value();
  try {
    py::object base = py::module_::import("omnirelay.errors").attr("OmniRelayError");
    if (py::isinstance(value, base)) {
      int code = value.attr("code").cast<int>();
      std::string message = py::str(value.attr("message"));
      absl::Status status(static_cast<absl::StatusCode>(code), core::ToAbsl(message));
      py::object ec = value.attr("error_code");
      if (!ec.is_none()) status = core::WithErrorCode(status, ec.cast<std::string>());
      return status;
    }
  } catch (const py::error_already_set&) {
  }
  return absl::InternalError(std::string("Python procedure raised: ") + error.what());
}

py::dict HeadersToDict(const core::Headers& headers) {
  py::dict out;
  for (const auto& [k, v] : headers.entries()) out[py::str(k)] = py::str(v);
  return out;
}

class PyNode {
 public:
  // The same loader as `omnirelay serve`: a file goes through
  // config::LoadFile (YAML by yaml-cpp with our scalar rules, or JSON), then
  // OMNIRELAY__* environment overrides, then `sets`, then validation.
  // `config_json` is used when no `config_path` is given.
  PyNode(const std::string& config_json, const std::vector<std::string>& sets, int python_threads,
         const std::string& config_path, bool use_environment)
      : pool_(std::make_shared<PythonPool>(python_threads)) {
    nlohmann::json root;
    if (!config_path.empty()) {
      root = ValueOrThrow(config::LoadFile(config_path));
    } else {
      root = nlohmann::json::parse(config_json, nullptr, false);
      if (root.is_discarded()) ThrowIfError(absl::InvalidArgumentError("config: not valid JSON"));
    }
    if (use_environment) ThrowIfError(config::ApplyEnvironment(root));
    ThrowIfError(config::ApplySets(root, sets));
    auto parsed = ValueOrThrow(config::Parse(root));
    node_ = ValueOrThrow(node::Node::Create(std::move(parsed)));
  }
  ~PyNode() {
    py::gil_scoped_release release;
    Shutdown();
  }

  // handler(body: bytes, meta: dict) -> bytes
  void RegisterUnary(const std::string& service, const std::string& name, py::function handler) {
    auto shared = std::make_shared<py::function>(std::move(handler));
    // The py::function must be destroyed with the GIL held.
    std::shared_ptr<py::function> guarded(new py::function(*shared), [](py::function* f) {
      py::gil_scoped_acquire gil;
      delete f;
    });
    shared.reset();
    dispatcher::Procedure procedure;
    procedure.service = service;
    procedure.name = name;
    procedure.kind = dispatcher::ProcedureKind::kUnary;
    procedure.encoding = "raw";
    std::weak_ptr<PythonPool> weak_pool = pool_;
    procedure.unary = [guarded, weak_pool](dispatcher::Request request,
                                           dispatcher::UnaryCallback done) {
      auto pool = weak_pool.lock();
      if (!pool) {
        done(absl::UnavailableError("node is stopping"));
        return;
      }
      auto call = std::make_shared<std::pair<dispatcher::Request, dispatcher::UnaryCallback>>(
          std::move(request), std::move(done));
      pool->Post([guarded, call] {
        absl::StatusOr<dispatcher::Response> result;
        {
          py::gil_scoped_acquire gil;
          try {
            const auto& meta = call->first.meta;
            py::dict info;
            info["service"] = meta.service;
            info["procedure"] = meta.procedure;
            info["transport"] = meta.transport;
            info["caller"] = meta.caller;
            info["headers"] = HeadersToDict(meta.headers);
            py::object out = (*guarded)(py::bytes(call->first.body), info);
            dispatcher::Response response;
            response.body = out.is_none() ? std::string() : out.cast<std::string>();
            result = std::move(response);
          } catch (py::error_already_set& error) {
            result = StatusFromPython(error);
          } catch (const std::exception& error) {
            result = absl::InternalError(error.what());
          }
        }
        call->second(std::move(result));
      });
    };
    ThrowIfError(node_->Register(std::move(procedure)));
  }

  void Start() {
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = node_->Start();
    }
    ThrowIfError(status);
  }

  void Stop(double drain_seconds) {
    py::gil_scoped_release release;
    node_->Drain();
    node_->WaitIdle(std::chrono::milliseconds(static_cast<int64_t>(drain_seconds * 1000)));
    Shutdown();
  }

  // Calls `procedure` of `service` through the named outbound (with the
  // outbound middleware chain). Returns (body, headers).
  std::pair<py::bytes, py::dict> Call(const std::string& outbound, const std::string& service,
                                      const std::string& procedure, const std::string& body,
                                      const std::map<std::string, std::string>& headers,
                                      std::optional<double> timeout_seconds) {
    dispatcher::Request request;
    request.meta.service = service;
    request.meta.procedure = procedure;
    request.meta.caller = node_->config().service;
    for (const auto& [k, v] : headers) request.meta.headers.Set(k, v);
    if (timeout_seconds) {
      request.meta.time_to_live = std::chrono::duration_cast<core::Duration>(
          std::chrono::duration<double>(*timeout_seconds));
      request.meta.deadline = request.meta.EffectiveDeadline(std::chrono::system_clock::now());
    }
    request.body = body;
    absl::StatusOr<dispatcher::Response> result;
    {
      py::gil_scoped_release release;
      std::promise<absl::StatusOr<dispatcher::Response>> promise;
      auto future = promise.get_future();
      node_->dispatcher().CallOutbound(
          outbound, std::move(request),
          [&promise](absl::StatusOr<dispatcher::Response> r) { promise.set_value(std::move(r)); });
      result = future.get();
    }
    if (!result.ok()) ThrowIfError(result.status());
    return {py::bytes(result->body), HeadersToDict(result->headers)};
  }

  std::string ReadyInfo() const { return node_->ReadyInfo().dump(); }
  std::string Introspect() const { return node_->Introspect().dump(); }

 private:
  void Shutdown() {
    if (!node_) return;
    node_->Stop();
    pool_->Stop();
  }
  std::shared_ptr<PythonPool> pool_;
  std::unique_ptr<node::Node> node_;
};

}  // namespace

void RegisterNode(py::module_& m) {
  py::class_<PyNode>(m, "Node")
      .def(py::init<const std::string&, const std::vector<std::string>&, int, const std::string&,
                    bool>(),
           py::arg("config_json"), py::arg("sets") = std::vector<std::string>{},
           py::arg("python_threads") = 4, py::arg("config_path") = std::string(),
           py::arg("use_environment") = true)
      .def("register_unary", &PyNode::RegisterUnary, py::arg("service"), py::arg("name"),
           py::arg("handler"))
      .def("start", &PyNode::Start)
      .def("stop", &PyNode::Stop, py::arg("drain_seconds") = 5.0)
      .def("call", &PyNode::Call, py::arg("outbound"), py::arg("service"), py::arg("procedure"),
           py::arg("body"), py::arg("headers") = std::map<std::string, std::string>{},
           py::arg("timeout") = std::nullopt)
      .def("ready_info", &PyNode::ReadyInfo)
      .def("introspect", &PyNode::Introspect);
}

}  // namespace omnirelay::bindings
