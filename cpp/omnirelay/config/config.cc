#include "omnirelay/config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "omnirelay/core/address.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/peers/chooser.h"

extern char** environ;

namespace omnirelay::config {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// A value as JSON text for error messages; invalid UTF-8 is replaced rather
// than thrown about (fuzz target config_yaml).
std::string Show(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Collects every problem with its key path.
class Errors {
 public:
  void Add(const std::string& path, const std::string& message) {
    lines_.push_back(path + ": " + message);
  }
  bool empty() const { return lines_.empty(); }
  absl::Status ToStatus() const {
    std::string all;
    for (const auto& l : lines_) all += (all.empty() ? "" : "\n") + l;
    return absl::InvalidArgumentError(all);
  }

 private:
  std::vector<std::string> lines_;
};

// A view of one JSON object that tracks which keys were consumed, so unknown
// keys (typos) are reported. Keys match case-insensitively (environment
// overrides arrive upper-cased).
class Obj {
 public:
  Obj(const nlohmann::json& json, std::string path, Errors& errors)
      : json_(json), path_(std::move(path)), errors_(errors) {
    if (!json_.is_object()) errors_.Add(path_, "must be an object");
  }
  ~Obj() {
    if (!json_.is_object()) return;
    for (const auto& [key, value] : json_.items()) {
      if (std::find(used_.begin(), used_.end(), Lower(key)) == used_.end()) {
        errors_.Add(path_ + "." + key, "unknown key");
      }
    }
  }
  const nlohmann::json* Get(std::string_view key) {
    used_.push_back(Lower(key));
    if (!json_.is_object()) return nullptr;
    for (const auto& [k, v] : json_.items()) {
      if (Lower(k) == Lower(key)) return &v;
    }
    return nullptr;
  }
  std::string Path(std::string_view key) const { return path_ + "." + std::string(key); }

  void String(std::string_view key, std::string& out) {
    if (const auto* v = Get(key)) {
      if (v->is_string()) {
        out = v->get<std::string>();
      } else if (v->is_number() || v->is_boolean()) {
        out = Show(*v);
      } else {
        errors_.Add(Path(key), "must be a string");
      }
    }
  }
  void Int(std::string_view key, int& out, int min = 0) {
    if (const auto* v = Get(key)) {
      std::optional<long long> n;
      if (v->is_number_integer()) n = v->get<long long>();
      if (v->is_string()) {
        try {
          size_t used = 0;
          n = std::stoll(v->get<std::string>(), &used);
          if (used != v->get<std::string>().size()) n.reset();
        } catch (...) {
        }
      }
      if (!n || *n < min || *n > 1'000'000'000) {
        errors_.Add(Path(key),
                    "must be an integer >= " + std::to_string(min) + ", got " + Show(*v));
      } else {
        out = static_cast<int>(*n);
      }
    }
  }
  void Double(std::string_view key, double& out, double min = 0) {
    if (const auto* v = Get(key)) {
      std::optional<double> n;
      if (v->is_number()) n = v->get<double>();
      if (v->is_string()) {
        // The whole string must be the number: "1.5x" and "nan" are errors.
        double parsed = 0;
        const std::string& text = v->get_ref<const std::string&>();
        if (!text.empty() && absl::SimpleAtod(text, &parsed)) n = parsed;
      }
      if (!n || !std::isfinite(*n) || *n < min) {
        errors_.Add(Path(key), "must be a number >= " + std::to_string(min) + ", got " + Show(*v));
      } else {
        out = *n;
      }
    }
  }
  void Bool(std::string_view key, bool& out) {
    if (const auto* v = Get(key)) {
      if (v->is_boolean()) {
        out = v->get<bool>();
      } else if (v->is_string() && (Lower(v->get<std::string>()) == "true" ||
                                    Lower(v->get<std::string>()) == "false")) {
        out = Lower(v->get<std::string>()) == "true";
      } else {
        errors_.Add(Path(key), "must be true or false, got " + Show(*v));
      }
    }
  }
  void Dur(std::string_view key, core::Duration& out) {
    if (const auto* v = Get(key)) {
      std::optional<core::Duration> d;
      // Numbers are milliseconds, at most ~100 years (beyond, nanosecond
      // arithmetic overflows: fuzz target config_json, drain.timeout 1e308).
      if (v->is_number() && v->get<double>() >= 0 && v->get<double>() <= 3.2e12) {
        d = std::chrono::duration_cast<core::Duration>(
            std::chrono::duration<double, std::milli>(v->get<double>()));
      } else if (v->is_string()) {
        d = core::ParseDuration(v->get<std::string>());
      }
      if (!d) {
        errors_.Add(Path(key), "must be a duration like \"250ms\", \"1.5s\", got " + Show(*v));
      } else {
        out = *d;
      }
    }
  }
  void Strings(std::string_view key, std::vector<std::string>& out) {
    if (const auto* v = Get(key)) {
      if (v->is_string()) {
        // "a,b,c" (handy for --set and environment overrides)
        out.clear();
        std::stringstream ss(v->get<std::string>());
        std::string item;
        while (std::getline(ss, item, ',')) {
          if (!item.empty()) out.push_back(item);
        }
        return;
      }
      if (!v->is_array()) {
        errors_.Add(Path(key), "must be a list of strings");
        return;
      }
      out.clear();
      for (size_t i = 0; i < v->size(); ++i) {
        if (!(*v)[i].is_string()) {
          errors_.Add(Path(key) + "[" + std::to_string(i) + "]", "must be a string");
        } else {
          out.push_back((*v)[i].get<std::string>());
        }
      }
    }
  }
  Errors& errors() { return errors_; }

 private:
  const nlohmann::json& json_;
  std::string path_;
  Errors& errors_;
  std::vector<std::string> used_;
};

bool ValidAddress(const std::string& address) { return core::IsHostPort(address); }

// "'x' is not host:port (why)", the reason from the one address parser.
std::string NotHostPort(const std::string& address, std::string_view what = "host:port") {
  auto parsed = core::ParseHostPort(address);
  std::string why = parsed.ok() ? "" : std::string(parsed.status().message());
  if (auto cut = why.find("' "); cut != std::string::npos) why = why.substr(cut + 2);
  if (why.starts_with("is not ")) why.clear();  // nothing to add to "is not host:port"
  return "'" + address + "' is not " + std::string(what) + (why.empty() ? "" : " (" + why + ")");
}

// Drops scheme and path ("https://h:1/x" -> "h:1"); unparseable input is kept
// as it is so validation reports it.
std::string StripScheme(std::string s) {
  auto parsed = core::ParseHostPort(s);
  return parsed.ok() ? parsed->Authority() : s;
}

void ParseInbound(Obj& parent, std::string_view key, std::optional<InboundConfig>& out) {
  const auto* v = parent.Get(key);
  if (v == nullptr || v->is_null()) return;
  const std::string path = parent.Path(key);
  const nlohmann::json* node = v;
  if (v->is_array()) {  // [{address}] as in appsettings: the first entry
    if (v->empty()) return;
    if (v->size() > 1)
      parent.errors().Add(path, "only one " + std::string(key) + " inbound is supported");
    node = &(*v)[0];
  }
  Obj obj(*node, path, parent.errors());
  InboundConfig inbound;
  obj.String("address", inbound.address);
  std::vector<std::string> urls;
  obj.Strings("urls", urls);
  if (inbound.address.empty() && !urls.empty()) inbound.address = StripScheme(urls.front());
  obj.Int("threads", inbound.threads, 1);
  if (key == "http") {
    obj.Int("maxHeaderBytes", inbound.max_header_bytes, 256);
    obj.Int("maxBodyBytes", inbound.max_body_bytes, 0);
    obj.Dur("headerTimeout", inbound.header_timeout);
    obj.Dur("bodyTimeout", inbound.body_timeout);
    for (auto [name, value] : {std::pair{"headerTimeout", inbound.header_timeout},
                               std::pair{"bodyTimeout", inbound.body_timeout}}) {
      if (value <= core::Duration::zero())
        parent.errors().Add(path + "." + name, "must be positive");
    }
  } else {
    obj.Int("maxStreams", inbound.max_streams, 1);
  }
  if (inbound.address.empty()) {
    parent.errors().Add(path + ".address", "is required");
  } else if (!ValidAddress(inbound.address)) {
    parent.errors().Add(path + ".address", NotHostPort(inbound.address));
  }
  out = inbound;
}

void ParseProfile(Obj& obj, RateLimitProfileConfig& p) {
  obj.Int("maxConcurrency", p.max_concurrency);
  obj.Double("tokensPerSecond", p.tokens_per_second);
  obj.Double("burst", p.burst);
}

// Splits "a.b.c" into parts.
std::vector<std::string> SplitPath(std::string_view key, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t pos = key.find(sep, start);
    parts.emplace_back(key.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return parts;
}

absl::Status SetPath(nlohmann::json& root, std::vector<std::string> parts, nlohmann::json value) {
  if (parts.empty() || Lower(parts[0]) != "omnirelay") parts.insert(parts.begin(), "omniRelay");
  nlohmann::json* node = &root;
  std::string path;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].empty()) return absl::InvalidArgumentError("empty key segment in '" + path + "'");
    path += (path.empty() ? "" : ".") + parts[i];
    if (node->is_null()) *node = nlohmann::json::object();
    if (node->is_array()) {
      size_t index = 0;
      try {
        index = std::stoul(parts[i]);
      } catch (...) {
        return absl::InvalidArgumentError(path + ": list index expected");
      }
      if (index > node->size()) return absl::InvalidArgumentError(path + ": index out of range");
      if (index == node->size()) node->push_back(nullptr);
      node = &(*node)[index];
      continue;
    }
    if (!node->is_object()) return absl::InvalidArgumentError(path + ": parent is not an object");
    std::string key = parts[i];
    for (auto& [k, v] : node->items()) {
      if (Lower(k) == Lower(parts[i])) key = k;
    }
    node = &(*node)[key];
  }
  *node = std::move(value);
  return absl::OkStatus();
}

nlohmann::json ParseValue(const std::string& text) {
  auto parsed = nlohmann::json::parse(text, nullptr, false);
  if (parsed.is_discarded()) return text;
  return parsed;
}

// Configuration is small and shallow; anything deeper or larger is hostile or
// an alias cycle (`a: &x {b: *x}` makes yaml-cpp return a cyclic graph), which
// would recurse forever (or, with several aliases, explode). Found by the
// config_yaml fuzz target (corpus: alias-loop.yaml).
constexpr int kMaxYamlDepth = 64;
constexpr int kMaxYamlNodes = 100000;

struct YamlWalk {
  int nodes = 0;
  bool refused = false;
};

nlohmann::json YamlNode(const YAML::Node& node, int depth, YamlWalk& walk) {
  if (walk.refused || depth > kMaxYamlDepth || ++walk.nodes > kMaxYamlNodes) {
    walk.refused = true;
    return nullptr;
  }
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& kv : node)
        out[kv.first.as<std::string>()] = YamlNode(kv.second, depth + 1, walk);
      return out;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : node) out.push_back(YamlNode(item, depth + 1, walk));
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string text = node.Scalar();
      if (node.Tag() == "!") return text;  // quoted scalar stays a string
      if (text == "true" || text == "True") return true;
      if (text == "false" || text == "False") return false;
      if (text == "null" || text == "~") return nullptr;
      auto parsed = nlohmann::json::parse(text, nullptr, false);
      if (!parsed.is_discarded() && parsed.is_number()) return parsed;
      return text;
    }
    default:
      return nullptr;
  }
}

void ParseGateway(const nlohmann::json& value, Errors& errors, GatewayConfig& gw) {
  const std::string path = "omniRelay.gateway";
  Obj g(value, path, errors);
  g.String("address", gw.address);
  if (gw.address.empty()) {
    errors.Add(path + ".address", "is required");
  } else if (!ValidAddress(gw.address)) {
    errors.Add(path + ".address", NotHostPort(gw.address));
  }
  if (const auto* jwt = g.Get("jwt")) {
    Obj j(*jwt, path + ".jwt", errors);
    j.String("secretFile", gw.jwt_secret_file);
  }
  if (const auto* clusters = g.Get("clusters")) {
    if (!clusters->is_object()) {
      errors.Add(path + ".clusters", "must be an object of named clusters");
    } else {
      for (const auto& [name, value] : clusters->items()) {
        const std::string cpath = path + ".clusters." + name;
        Obj c(value, cpath, errors);
        GatewayClusterConfig cluster;
        cluster.name = name;
        c.Strings("endpoints", cluster.endpoints);
        c.String("registry", cluster.registry);
        cluster.registry = StripScheme(cluster.registry);
        c.String("role", cluster.role);
        c.Dur("refreshInterval", cluster.refresh_interval);
        if (cluster.endpoints.empty() == cluster.registry.empty()) {
          errors.Add(cpath, "needs exactly one of 'endpoints' or 'registry'");
        }
        for (size_t i = 0; i < cluster.endpoints.size(); ++i) {
          cluster.endpoints[i] = StripScheme(cluster.endpoints[i]);
          if (!ValidAddress(cluster.endpoints[i])) {
            errors.Add(cpath + ".endpoints[" + std::to_string(i) + "]",
                       NotHostPort(cluster.endpoints[i], "a host:port endpoint"));
          }
        }
        if (!cluster.registry.empty() && !ValidAddress(cluster.registry)) {
          errors.Add(cpath + ".registry", NotHostPort(cluster.registry));
        }
        if (cluster.refresh_interval <= core::Duration::zero()) {
          errors.Add(cpath + ".refreshInterval", "must be positive");
        }
        gw.clusters[name] = cluster;
      }
    }
  }
  if (gw.clusters.empty()) errors.Add(path + ".clusters", "needs at least one cluster");
  bool needs_jwt = false;
  if (const auto* routes = g.Get("routes")) {
    if (!routes->is_array()) {
      errors.Add(path + ".routes", "must be a list");
    } else {
      for (size_t i = 0; i < routes->size(); ++i) {
        const std::string rpath = path + ".routes[" + std::to_string(i) + "]";
        Obj r((*routes)[i], rpath, errors);
        GatewayRouteConfig route;
        r.String("prefix", route.prefix);
        r.String("cluster", route.cluster);
        r.String("authorization", route.authorization);
        r.String("balancer", route.balancer);
        r.String("stickyHeader", route.sticky_header);
        route.authorization = Lower(route.authorization);
        route.balancer = Lower(route.balancer);
        // gRPC metadata keys are lower case on the wire.
        route.sticky_header = Lower(route.sticky_header);
        if (route.cluster.empty()) {
          errors.Add(rpath + ".cluster", "is required");
        } else if (!gw.clusters.count(route.cluster)) {
          errors.Add(rpath + ".cluster", "unknown cluster '" + route.cluster + "'");
        }
        if (route.authorization != "none" && route.authorization != "required") {
          errors.Add(rpath + ".authorization",
                     "unknown authorization '" + route.authorization + "' (none, required)");
        }
        needs_jwt = needs_jwt || route.authorization == "required";
        if (route.balancer != "round-robin" && route.balancer != "sticky") {
          errors.Add(rpath + ".balancer",
                     "unknown balancer '" + route.balancer + "' (round-robin, sticky)");
        }
        if (route.balancer == "sticky" && route.sticky_header.empty()) {
          errors.Add(rpath + ".stickyHeader", "must not be empty for a sticky route");
        }
        gw.routes.push_back(route);
      }
    }
  }
  if (const auto* def = g.Get("defaultRoute")) {
    const std::string dpath = path + ".defaultRoute";
    Obj d(*def, dpath, errors);
    gw.default_route.error.clear();
    d.String("error", gw.default_route.error);
    d.String("cluster", gw.default_route.cluster);
    if (gw.default_route.error.empty() == gw.default_route.cluster.empty()) {
      errors.Add(dpath, "needs exactly one of 'error' or 'cluster'");
    }
    if (!gw.default_route.cluster.empty() && !gw.clusters.count(gw.default_route.cluster)) {
      errors.Add(dpath + ".cluster", "unknown cluster '" + gw.default_route.cluster + "'");
    }
    const auto& codes = StatusCodeNames();
    if (!gw.default_route.error.empty()) {
      std::string upper = gw.default_route.error;
      for (auto& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      gw.default_route.error = upper;
      if (std::find(codes.begin() + 1, codes.end(), upper) == codes.end()) {
        errors.Add(dpath + ".error",
                   "unknown status code '" + upper + "' (a gRPC code name other than OK)");
      }
    }
  }
  g.Int("maxAttempts", gw.max_attempts, 1);
  g.Dur("attemptTimeout", gw.attempt_timeout);
  if (gw.attempt_timeout <= core::Duration::zero()) {
    errors.Add(path + ".attemptTimeout", "must be positive");
  }
  if (needs_jwt && gw.jwt_secret_file.empty()) {
    errors.Add(path + ".jwt.secretFile", "is required when a route has authorization: required");
  }
}

}  // namespace

const std::vector<std::string>& StatusCodeNames() {
  static const std::vector<std::string> names = {"OK",
                                                 "CANCELLED",
                                                 "UNKNOWN",
                                                 "INVALID_ARGUMENT",
                                                 "DEADLINE_EXCEEDED",
                                                 "NOT_FOUND",
                                                 "ALREADY_EXISTS",
                                                 "PERMISSION_DENIED",
                                                 "RESOURCE_EXHAUSTED",
                                                 "FAILED_PRECONDITION",
                                                 "ABORTED",
                                                 "OUT_OF_RANGE",
                                                 "UNIMPLEMENTED",
                                                 "INTERNAL",
                                                 "UNAVAILABLE",
                                                 "DATA_LOSS",
                                                 "UNAUTHENTICATED"};
  return names;
}

const std::vector<std::string>& MiddlewareNames() {
  static const std::vector<std::string> names = {"recovery",  "tracing",  "metrics",    "logging",
                                                 "principal", "deadline", "rate-limit", "retry"};
  return names;
}

std::vector<std::string> KnownChoosers() { return peers::ChooserNames(); }

absl::StatusOr<nlohmann::json> YamlToJson(const std::string& text) {
  try {
    YamlWalk walk;
    nlohmann::json out = YamlNode(YAML::Load(text), 0, walk);
    if (walk.refused) {
      return absl::InvalidArgumentError("YAML: deeper than " + std::to_string(kMaxYamlDepth) +
                                        " levels or more than " + std::to_string(kMaxYamlNodes) +
                                        " nodes (an alias that refers to itself?)");
    }
    return out;
  } catch (const YAML::Exception& error) {
    return absl::InvalidArgumentError(std::string("YAML: ") + error.what());
  }
}

absl::StatusOr<nlohmann::json> LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot read config file '" + path + "'");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  const bool yaml = path.ends_with(".yaml") || path.ends_with(".yml");
  if (yaml) {
    auto parsed = YamlToJson(text);
    if (!parsed.ok())
      return absl::InvalidArgumentError(path + ": " + std::string(parsed.status().message()));
    return parsed;
  }
  auto parsed = nlohmann::json::parse(text, nullptr, false, /*ignore_comments=*/true);
  if (parsed.is_discarded()) return absl::InvalidArgumentError(path + ": not valid JSON");
  return parsed;
}

absl::Status ApplyEnvironment(nlohmann::json& root, char** environ_list) {
  char** env = environ_list != nullptr ? environ_list : environ;
  for (; env != nullptr && *env != nullptr; ++env) {
    std::string_view entry(*env);
    if (!entry.starts_with("OMNIRELAY__")) continue;
    const auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    std::string key(entry.substr(std::string_view("OMNIRELAY__").size(),
                                 eq - std::string_view("OMNIRELAY__").size()));
    std::vector<std::string> parts;
    for (auto& p : SplitPath(key, '_')) parts.push_back(p);
    // "__" separates levels; single underscores inside a segment are rare in
    // our keys, so split on "__" only.
    parts.clear();
    size_t start = 0;
    for (;;) {
      size_t pos = key.find("__", start);
      parts.push_back(key.substr(start, pos == std::string::npos ? pos : pos - start));
      if (pos == std::string::npos) break;
      start = pos + 2;
    }
    if (auto s = SetPath(root, parts, ParseValue(std::string(entry.substr(eq + 1)))); !s.ok()) {
      return absl::InvalidArgumentError("environment " + std::string(entry.substr(0, eq)) + ": " +
                                        std::string(s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ApplySets(nlohmann::json& root, const std::vector<std::string>& sets) {
  for (const auto& set : sets) {
    const auto eq = set.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError("--set '" + set + "': expected key=value");
    }
    if (auto s = SetPath(root, SplitPath(set.substr(0, eq), '.'), ParseValue(set.substr(eq + 1)));
        !s.ok()) {
      return absl::InvalidArgumentError("--set '" + set + "': " + std::string(s.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<NodeConfig> Parse(const nlohmann::json& root) {
  Errors errors;
  NodeConfig config;
  if (!root.is_object()) return absl::InvalidArgumentError("configuration: must be an object");
  const nlohmann::json* section = nullptr;
  for (const auto& [k, v] : root.items()) {
    if (Lower(k) == "omnirelay") section = &v;
  }
  if (section == nullptr) return absl::InvalidArgumentError("omniRelay: section is missing");
  {
    Obj top(*section, "omniRelay", errors);
    top.String("service", config.service);
    if (config.service.empty()) errors.Add("omniRelay.service", "must not be empty");
    if (const auto* inbounds = top.Get("inbounds")) {
      Obj in(*inbounds, "omniRelay.inbounds", errors);
      ParseInbound(in, "grpc", config.grpc);
      ParseInbound(in, "http", config.http);
    }
    if (const auto* admin = top.Get("admin")) {
      Obj a(*admin, "omniRelay.admin", errors);
      a.String("address", config.admin_address);
      if (!ValidAddress(config.admin_address)) {
        errors.Add("omniRelay.admin.address", NotHostPort(config.admin_address));
      }
    }
    if (const auto* drain = top.Get("drain")) {
      Obj d(*drain, "omniRelay.drain", errors);
      d.Dur("timeout", config.drain_timeout);
    }
    const auto choosers = KnownChoosers();
    if (const auto* outbounds = top.Get("outbounds")) {
      if (!outbounds->is_object()) {
        errors.Add("omniRelay.outbounds", "must be an object of named outbounds");
      } else {
        for (const auto& [name, value] : outbounds->items()) {
          const std::string path = "omniRelay.outbounds." + name;
          Obj o(value, path, errors);
          OutboundConfig out;
          out.name = name;
          o.String("transport", out.transport);
          out.transport = Lower(out.transport);
          if (out.transport != "grpc" && out.transport != "http") {
            errors.Add(path + ".transport",
                       "unknown transport '" + out.transport + "' (grpc, http)");
          }
          o.String("service", out.service);
          o.String("procedure", out.procedure);
          o.Strings("endpoints", out.endpoints);
          if (out.endpoints.empty()) errors.Add(path + ".endpoints", "needs at least one endpoint");
          for (size_t i = 0; i < out.endpoints.size(); ++i) {
            if (!ValidAddress(StripScheme(out.endpoints[i]))) {
              errors.Add(path + ".endpoints[" + std::to_string(i) + "]",
                         NotHostPort(out.endpoints[i], "a host:port endpoint"));
            }
          }
          o.String("peerChooser", out.peer_chooser);
          if (std::find(choosers.begin(), choosers.end(), out.peer_chooser) == choosers.end()) {
            std::string known;
            for (const auto& c : choosers) known += (known.empty() ? "" : ", ") + c;
            errors.Add(path + ".peerChooser",
                       "unknown chooser '" + out.peer_chooser + "' (known: " + known + ")");
          }
          o.Int("maxInFlightPerPeer", out.max_in_flight_per_peer);
          o.Int("threads", out.threads, 1);
          if (const auto* cb = o.Get("circuitBreaker")) {
            Obj c(*cb, path + ".circuitBreaker", errors);
            c.Bool("enabled", out.circuit_breaker.enabled);
            c.Int("consecutiveFailures", out.circuit_breaker.consecutive_failures, 1);
            c.Dur("openDelay", out.circuit_breaker.open_delay);
          }
          if (const auto* retry = o.Get("retry")) {
            Obj r(*retry, path + ".retry", errors);
            out.retry.enabled = true;
            r.Bool("enabled", out.retry.enabled);
            r.Int("maxAttempts", out.retry.max_attempts, 1);
            r.Dur("initialBackoff", out.retry.initial_backoff);
            r.Dur("maxBackoff", out.retry.max_backoff);
            r.Double("multiplier", out.retry.multiplier, 1);
            r.Double("jitter", out.retry.jitter);
            if (out.retry.jitter > 1) errors.Add(path + ".retry.jitter", "must be within [0, 1]");
            r.Double("budgetRatio", out.retry.budget_ratio);
            r.Double("budgetMax", out.retry.budget_max);
            r.Strings("idempotentProcedures", out.retry.idempotent_procedures);
            r.Bool("retryResourceExhausted", out.retry.retry_resource_exhausted);
          }
          config.outbounds[name] = out;
        }
      }
    }
    if (const auto* routes = top.Get("routes")) {
      if (!routes->is_array()) {
        errors.Add("omniRelay.routes", "must be a list");
      } else {
        for (size_t i = 0; i < routes->size(); ++i) {
          const std::string path = "omniRelay.routes[" + std::to_string(i) + "]";
          Obj r((*routes)[i], path, errors);
          RouteConfig route;
          r.String("prefix", route.prefix);
          r.String("outbound", route.outbound);
          r.String("kind", route.kind);
          if (route.outbound.empty()) {
            errors.Add(path + ".outbound", "is required");
          } else if (!config.outbounds.count(route.outbound)) {
            errors.Add(path + ".outbound", "unknown outbound '" + route.outbound + "'");
          }
          if (route.kind != "unary" && route.kind != "oneway" && route.kind != "server-stream" &&
              route.kind != "client-stream" && route.kind != "duplex") {
            errors.Add(path + ".kind",
                       "unknown kind '" + route.kind +
                           "' (unary, oneway, server-stream, client-stream, duplex)");
          }
          config.routes.push_back(route);
        }
      }
    }
    if (const auto* mw = top.Get("middleware")) {
      Obj m(*mw, "omniRelay.middleware", errors);
      m.Strings("inbound", config.middleware.inbound);
      m.Strings("outbound", config.middleware.outbound);
      for (const auto* list : {&config.middleware.inbound, &config.middleware.outbound}) {
        const std::string which = list == &config.middleware.inbound ? "inbound" : "outbound";
        for (size_t i = 0; i < list->size(); ++i) {
          const auto& names = MiddlewareNames();
          if (std::find(names.begin(), names.end(), (*list)[i]) == names.end()) {
            errors.Add("omniRelay.middleware." + which + "[" + std::to_string(i) + "]",
                       "unknown middleware '" + (*list)[i] + "'");
          }
        }
      }
      if (const auto* rl = m.Get("rateLimit")) {
        Obj r(*rl, "omniRelay.middleware.rateLimit", errors);
        RateLimitProfileConfig profile;
        ParseProfile(r, profile);
        if (const auto* bp = r.Get("backpressure")) {
          Obj b(*bp, "omniRelay.middleware.rateLimit.backpressure", errors);
          ParseProfile(b, config.middleware.backpressure);
        }
        config.middleware.rate_limit = profile;
      }
    }
    if (const auto* gateway = top.Get("gateway"); gateway != nullptr && !gateway->is_null()) {
      GatewayConfig gw;
      ParseGateway(*gateway, errors, gw);
      config.gateway = std::move(gw);
    }
    if (const auto* echo = top.Get("echo")) {
      Obj e(*echo, "omniRelay.echo", errors);
      config.echo.enabled = true;
      e.Bool("enabled", config.echo.enabled);
      e.String("instance", config.echo.instance);
      e.Int("maxConcurrency", config.echo.max_concurrency);
      e.Dur("latency", config.echo.latency);
      e.Strings("procedures", config.echo.procedures);
      for (size_t i = 0; i < config.echo.procedures.size(); ++i) {
        const std::string& name = config.echo.procedures[i];
        const auto slash = name.find('/', name.starts_with("/") ? 1 : 0);
        if (slash == std::string::npos || slash + 1 == name.size()) {
          errors.Add("omniRelay.echo.procedures[" + std::to_string(i) + "]",
                     "'" + name + "' is not service/Method");
        }
      }
    }
  }
  if (!errors.empty()) return errors.ToStatus();
  return config;
}

absl::StatusOr<NodeConfig> Load(const std::string& path, const std::vector<std::string>& sets,
                                bool use_environment) {
  nlohmann::json root = nlohmann::json::object();
  if (!path.empty()) {
    auto loaded = LoadFile(path);
    if (!loaded.ok()) return loaded.status();
    root = std::move(*loaded);
  }
  if (use_environment) {
    if (auto s = ApplyEnvironment(root); !s.ok()) return s;
  }
  if (auto s = ApplySets(root, sets); !s.ok()) return s;
  return Parse(root);
}

nlohmann::json ToJson(const NodeConfig& c) {
  auto ms = [](core::Duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  nlohmann::json outbounds = nlohmann::json::object();
  for (const auto& [name, o] : c.outbounds) {
    outbounds[name] = {{"transport", o.transport},
                       {"service", o.service},
                       {"procedure", o.procedure},
                       {"endpoints", o.endpoints},
                       {"peerChooser", o.peer_chooser},
                       {"maxInFlightPerPeer", o.max_in_flight_per_peer},
                       {"circuitBreaker",
                        {{"enabled", o.circuit_breaker.enabled},
                         {"consecutiveFailures", o.circuit_breaker.consecutive_failures},
                         {"openDelayMs", ms(o.circuit_breaker.open_delay)}}},
                       {"retry",
                        {{"enabled", o.retry.enabled},
                         {"maxAttempts", o.retry.max_attempts},
                         {"initialBackoffMs", ms(o.retry.initial_backoff)},
                         {"maxBackoffMs", ms(o.retry.max_backoff)},
                         {"budgetRatio", o.retry.budget_ratio},
                         {"idempotentProcedures", o.retry.idempotent_procedures},
                         {"retryResourceExhausted", o.retry.retry_resource_exhausted}}}};
  }
  nlohmann::json routes = nlohmann::json::array();
  for (const auto& r : c.routes) {
    routes.push_back({{"prefix", r.prefix}, {"outbound", r.outbound}, {"kind", r.kind}});
  }
  nlohmann::json inbounds = nlohmann::json::object();
  if (c.grpc) {
    inbounds["grpc"] = {{"address", c.grpc->address},
                        {"threads", c.grpc->threads},
                        {"maxStreams", c.grpc->max_streams}};
  }
  if (c.http) {
    inbounds["http"] = {{"address", c.http->address},
                        {"threads", c.http->threads},
                        {"maxHeaderBytes", c.http->max_header_bytes},
                        {"maxBodyBytes", c.http->max_body_bytes},
                        {"headerTimeoutMs", ms(c.http->header_timeout)},
                        {"bodyTimeoutMs", ms(c.http->body_timeout)}};
  }
  nlohmann::json out = {
      {"service", c.service},
      {"inbounds", inbounds},
      {"admin", {{"address", c.admin_address}}},
      {"outbounds", outbounds},
      {"routes", routes},
      {"middleware", {{"inbound", c.middleware.inbound}, {"outbound", c.middleware.outbound}}},
      {"echo",
       {{"enabled", c.echo.enabled},
        {"instance", c.echo.instance},
        {"maxConcurrency", c.echo.max_concurrency},
        {"latencyMs", ms(c.echo.latency)},
        {"procedures", c.echo.procedures}}},
      {"drain", {{"timeoutMs", ms(c.drain_timeout)}}}};
  if (c.gateway) {
    const auto& g = *c.gateway;
    nlohmann::json clusters = nlohmann::json::object();
    for (const auto& [name, cl] : g.clusters) {
      nlohmann::json j = nlohmann::json::object();
      if (!cl.endpoints.empty()) j["endpoints"] = cl.endpoints;
      if (!cl.registry.empty()) {
        j["registry"] = cl.registry;
        j["role"] = cl.role;
        j["refreshIntervalMs"] = ms(cl.refresh_interval);
      }
      clusters[name] = j;
    }
    nlohmann::json groutes = nlohmann::json::array();
    for (const auto& r : g.routes) {
      groutes.push_back({{"prefix", r.prefix},
                         {"cluster", r.cluster},
                         {"authorization", r.authorization},
                         {"balancer", r.balancer},
                         {"stickyHeader", r.sticky_header}});
    }
    nlohmann::json def = nlohmann::json::object();
    if (!g.default_route.cluster.empty()) {
      def["cluster"] = g.default_route.cluster;
    } else {
      def["error"] = g.default_route.error;
    }
    out["gateway"] = {{"address", g.address},
                      {"jwt", {{"secretFile", g.jwt_secret_file}}},
                      {"clusters", clusters},
                      {"routes", groutes},
                      {"defaultRoute", def},
                      {"maxAttempts", g.max_attempts},
                      {"attemptTimeoutMs", ms(g.attempt_timeout)}};
  }
  if (c.middleware.rate_limit) {
    out["middleware"]["rateLimit"] = {
        {"maxConcurrency", c.middleware.rate_limit->max_concurrency},
        {"tokensPerSecond", c.middleware.rate_limit->tokens_per_second},
        {"burst", c.middleware.rate_limit->burst}};
  }
  return {{"omniRelay", out}};
}

}  // namespace omnirelay::config
