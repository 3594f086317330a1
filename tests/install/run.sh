#!/bin/sh
# Installs a built ringbus into a scratch prefix, then builds and runs
# consumers out of tree against it: a CMake project (find_package; shared,
# static, C++ and the NATS bridge) and plain compiler lines from pkg-config
# (ringbus, ringbus_static and ringbus_nats), which sees only the prefix's
# .pc files. Any failing step fails the test.
#
# usage: run.sh CMAKE BUILD_DIR WORK_DIR CC CXX|- PKG_CONFIG LIBDIR WERROR(0|1)
#   LIBDIR is the build's CMAKE_INSTALL_LIBDIR (relative to the prefix).
set -eu
if [ $# -ne 8 ]; then
  echo "usage: $0 CMAKE BUILD_DIR WORK_DIR CC CXX|- PKG_CONFIG LIBDIR WERROR" >&2
  exit 2
fi
cmake=$1 build=$2 work=$3 cc=$4 cxx=$5 pkgconfig=$6 libdir=$7 werror=$8
src=$(cd "$(dirname "$0")" && pwd)
case $work in
  /*/*) ;;
  *) echo "WORK_DIR must be an absolute path below /, not '$work'" >&2; exit 2 ;;
esac
prefix=$work/prefix
lib=$prefix/$libdir
set -f # flags from pkg-config are split on purpose, never globbed

step=setup
on_exit() {
  rc=$?
  [ "$rc" -eq 0 ] || echo "install test FAILED (exit $rc) in step: $step" >&2
}
trap on_exit EXIT
begin() { step=$*; printf '\n== %s\n' "$step"; }
run() { echo "+ $*"; "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# ldd tells where an executable loads libringbus (and the bridge) from:
# the prefix, or nowhere for the static consumers.
loaded_from() { # executable library-name (libringbus, libringbus_nats)
  deps=$(LD_LIBRARY_PATH=$lib ldd "$1") || fail "ldd $1"
  printf '%s\n' "$deps" | sed -n "s/^[[:space:]]*$2\\.so[^ ]* => \\([^ ]*\\) .*/\\1/p"
}
expect_installed() { # executable library-name: loads that library from $lib
  found=$(loaded_from "$1" "$2")
  [ -n "$found" ] || fail "$1 does not load $2.so"
  [ "$(readlink -f "$found")" = "$(readlink -f "$lib/$2.so.$soversion")" ] ||
    fail "$1 loads $found, not the one in $lib"
  echo "   $1 loads $found"
}
expect_links() { # executable shared|static|any
  case $2 in
    shared) expect_installed "$1" libringbus ;;
    static)
      found=$(loaded_from "$1" libringbus)
      [ -z "$found" ] || fail "$1 loads $found but should contain the archive"
      echo "   $1 does not load libringbus.so" ;;
    any)
      found=$(loaded_from "$1" libringbus)
      echo "   $1 loads ${found:-no libringbus.so}" ;;
  esac
}
run_consumer() { # executable shared|static|any
  expect_links "$1" "$2"
  echo "+ LD_LIBRARY_PATH=$lib $1"
  LD_LIBRARY_PATH=$lib "$1" || fail "$1 exited with $?"
}

begin "install into $prefix"
run rm -rf "$work"
run mkdir -p "$work"
run "$cmake" --install "$build" --prefix "$prefix"

begin "check the installed files"
header=$prefix/include/ringbus.h
[ -f "$header" ] || fail "no $header"
v() { sed -n "s/^#define RBUS_VERSION_$1 \\([0-9][0-9]*\\).*/\\1/p" "$header"; }
version=$(v MAJOR).$(v MINOR).$(v PATCH)
soversion=$(v MAJOR).$(v MINOR)
case $version in
  *[!0-9.]* | .* | *. | *..*) fail "no RBUS_VERSION_* in $header (got '$version')" ;;
esac
echo "   header says $version (SOVERSION $soversion)"
for f in "$lib/libringbus.a" "$lib/libringbus.so" "$lib/libringbus.so.$soversion" \
         "$lib/libringbus.so.$version" "$lib/pkgconfig/ringbus.pc" \
         "$lib/pkgconfig/ringbus_static.pc" \
         "$lib/cmake/ringbus/ringbus-config.cmake" \
         "$lib/cmake/ringbus/ringbus-config-version.cmake" \
         "$lib/cmake/ringbus/ringbus-targets.cmake"; do
  [ -e "$f" ] || fail "not installed: $f"
  echo "   ok $f"
done
if [ -e "$lib/libringbus_nats.so" ]; then
  [ -e "$lib/pkgconfig/ringbus_nats.pc" ] || fail "libringbus_nats.so is installed, ringbus_nats.pc is not"
  echo "   ok $lib/pkgconfig/ringbus_nats.pc"
else
  [ ! -e "$lib/pkgconfig/ringbus_nats.pc" ] || fail "ringbus_nats.pc is installed without the bridge"
fi

begin "CMake consumer: configure (find_package)"
if [ "$cxx" = - ]; then
  echo "   no C++ compiler: the C++ consumer is left out"
  cxx_opt=-DCONSUMER_CXX=OFF
else
  cxx_opt=-DCMAKE_CXX_COMPILER=$cxx
fi
run "$cmake" -S "$src" -B "$work/cmake-build" -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_C_COMPILER="$cc" "$cxx_opt" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DRBUS_PREFIX="$prefix" \
  -DRBUS_EXPECT_VERSION="$version" -DCONSUMER_WERROR="$werror"

begin "CMake consumer: build"
run "$cmake" --build "$work/cmake-build" --verbose

begin "CMake consumer: run"
run_consumer "$work/cmake-build/consumer_shared" shared
run_consumer "$work/cmake-build/consumer_static" static
if [ "$cxx" != - ]; then
  # ringbus::ringbus is either library, so only its result is checked.
  run_consumer "$work/cmake-build/consumer_cxx" any
fi
if [ -e "$lib/libringbus_nats.so" ]; then
  [ -x "$work/cmake-build/consumer_nats" ] || fail "libringbus_nats is installed but consumer_nats was not built"
  echo "+ LD_LIBRARY_PATH=$lib $work/cmake-build/consumer_nats nats://127.0.0.1:1"
  LD_LIBRARY_PATH=$lib "$work/cmake-build/consumer_nats" nats://127.0.0.1:1 ||
    fail "consumer_nats exited with $?"
else
  echo "   libringbus_nats not installed (built without libnats): no bridge consumer"
fi

begin "pkg-config: only the prefix's modules are visible"
# PKG_CONFIG_LIBDIR replaces the system directories, so ck.pc and
# libnats.pc cannot be found: using ringbus must not need them.
PKG_CONFIG_PATH=$lib/pkgconfig
PKG_CONFIG_LIBDIR=$work/no-system-pc
export PKG_CONFIG_PATH PKG_CONFIG_LIBDIR
run mkdir -p "$PKG_CONFIG_LIBDIR"
if "$pkgconfig" --exists ck; then
  fail "$pkgconfig still finds ck.pc: the checks below would prove nothing"
fi
echo "   ck.pc is hidden"
pc() { # pkg-config arguments...: its output in $pcout
  pcout=$("$pkgconfig" "$@") || fail "pkg-config $* failed"
  printf '   pkg-config %s: %s\n' "$*" "$pcout"
}
has_word() { # words word
  for w in $1; do
    [ "$w" = "$2" ] && return 0
  done
  return 1
}
for m in ringbus ringbus_static; do
  pc --modversion "$m"
  [ "$pcout" = "$version" ] || fail "$m.pc says $pcout, the header $version"
  # ck's .pc adds -D__x86_64__, which is ck's business, not our users'.
  for mode in "" --static; do
    # shellcheck disable=SC2086 # $mode is one word or none
    pc $mode --cflags "$m"
    case $pcout in
      *__x86_64__*) fail "ck's flags leak into $m's --cflags" ;;
    esac
  done
done
begin "CMake consumer of the shared library alone, ck.pc hidden"
run "$cmake" -S "$src/shared_only" -B "$work/shared-only-build" -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
run "$cmake" --build "$work/shared-only-build"
run_consumer "$work/shared-only-build/consumer_shared_only" shared

begin "pkg-config: what each module links"
pc --libs ringbus
has_word "$pcout" -lck && fail "pkg-config --libs ringbus gives -lck: libringbus.so carries its own"
pc --static --libs ringbus
has_word "$pcout" -lck || fail "pkg-config --static --libs ringbus lacks -lck, which libringbus.a needs"
has_word "$pcout" -pthread || fail "pkg-config --static --libs ringbus lacks -pthread"

warn="-std=c11 -Wall -Wextra -Wpedantic"
if [ "$werror" = 1 ]; then
  warn="$warn -Werror"
fi

begin "pkg-config consumer: shared (ringbus)"
pc --cflags ringbus
cflags=$pcout
pc --libs ringbus
libs=$pcout
# shellcheck disable=SC2086 # the flags are lists of words
run "$cc" $warn $cflags -o "$work/pc_shared" "$src/consumer.c" $libs
run_consumer "$work/pc_shared" shared

begin "pkg-config consumer: static (ringbus_static)"
pc --static --cflags ringbus_static
cflags=$pcout
pc --static --libs ringbus_static
libs=$pcout
# Every link of the archive needs the same flags, --static or not.
pc --libs ringbus_static
[ "$pcout" = "$libs" ] || fail "ringbus_static links differently without --static"
# shellcheck disable=SC2086 # likewise
run "$cc" $warn $cflags -DCONSUMER_STATIC=1 -o "$work/pc_static" "$src/consumer.c" $libs
run_consumer "$work/pc_static" static

if [ -e "$lib/libringbus_nats.so" ]; then
  begin "pkg-config consumer: the NATS bridge (ringbus_nats)"
  pc --modversion ringbus_nats
  [ "$pcout" = "$version" ] || fail "ringbus_nats.pc says $pcout, the header $version"
  pc --cflags ringbus_nats
  cflags=$pcout
  pc --libs ringbus_nats
  libs=$pcout
  # shellcheck disable=SC2086 # likewise
  run "$cc" $warn $cflags -o "$work/pc_nats" "$src/consumer_nats.c" $libs
  expect_installed "$work/pc_nats" libringbus_nats
  expect_links "$work/pc_nats" shared
  echo "+ LD_LIBRARY_PATH=$lib $work/pc_nats nats://127.0.0.1:1"
  LD_LIBRARY_PATH=$lib "$work/pc_nats" nats://127.0.0.1:1 || fail "pc_nats exited with $?"
else
  echo
  echo "   libringbus_nats not installed (built without libnats): no pkg-config bridge consumer"
fi

step=finished
echo
echo "install test: PASS (installed $version; CMake and pkg-config consumers ran)"
