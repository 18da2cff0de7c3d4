#!/usr/bin/env bash
# Installs every build, test and run-time dependency of OmniRelay from Debian's
# archive (bookworm). Idempotent: packages already present are skipped, and
# apt-get is not called at all when nothing is missing.
#
#   scripts/install-deps.sh            # everything (build + tests + benchmarks)
#
# Run as root (CI and the dev machines are root); otherwise it uses sudo.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config ccache clang-format
  # C++ libraries
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libssl-dev libboost-dev libboost-system-dev libnghttp2-dev
  prometheus-cpp-dev nlohmann-json3-dev libyaml-cpp-dev libcli11-dev
  libspdlog-dev libfmt-dev libjwt-dev libsqlite3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # replication log checksums (CRC-32)
  zlib1g-dev
  # Python: Debian's 3.11 with the packages the venv sees via --system-site-packages
  python3 python3-dev python3-venv python3-pip pybind11-dev
  python3-pytest python3-grpcio python3-protobuf python3-yaml python3-psutil
  # tools used by tests and benchmark scripts
  curl openssl iproute2 iptables
  # real coordination engine and metrics server, started by the harness as topology nodes
  etcd-server etcd-client prometheus
  # fuzzing (libFuzzer) and LeakSanitizer runtime
  clang-14 libfuzzer-14-dev libclang-rt-14-dev
  # relay benchmark (benchmarks/relay_vs_nginx.py): nginx grpc_pass as the baseline
  nginx
  # load-generator ceiling (benchmarks/benchmark_vs_h2load.py): h2load as the reference client
  nghttp2-client
  # side-by-side relay benchmark (benchmarks/relay_side_by_side.py): haproxy as the baseline
  haproxy
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  # dpkg-query prints "install ok installed" only for fully installed packages.
  if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} Debian packages already present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${#missing[@]} package(s): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
