#!/bin/sh
# edgepack Android harness (runs ON the phone; pushed by edgepack/device_bench/runners/adb.py).
#
# Runs TFLite's benchmark_model with the flags given after "--", samples the battery's current_now x
# voltage_now and the thermal zones during an idle baseline and during the run, and writes ONE result
# file (OUT) that the driver pulls and parses. Every benchmark_model output line is stamped with
# /proc/uptime, so the driver knows which power samples fall into the timed phase.
#
# usage: run_benchmark.sh --benchmark-model PATH --out FILE [--sysfs ROOT] [--uptime FILE]
#                         [--idle-ms MS] [--sample-ms MS] [--lib-dir DIR] -- BENCHMARK_MODEL_FLAGS...
#
#   --sysfs    root holding class/power_supply and class/thermal (default /sys; tests pass a folder)
#   --uptime   file whose first field is seconds since boot (default /proc/uptime)
#   --idle-ms  idle baseline length before the run (default 5000; 0 skips it)
#   --sample-ms power sampling period (default 100)
#   --lib-dir  directory with delegate libraries (QNN: libQnnTFLiteDelegate.so, libQnnHtp*.so); added to
#              LD_LIBRARY_PATH and ADSP_LIBRARY_PATH
#
# Exit status: 0 when OUT was written (benchmark_model's own exit status is recorded inside it),
# 64 on a usage error, 65 when OUT cannot be written. POSIX sh only (mksh/toybox, dash, busybox ash).

set -u

FORMAT="edgepack-android-bench 1"
BM=""
OUT=""
SYSFS="/sys"
UPTIME="/proc/uptime"
IDLE_MS=5000
SAMPLE_MS=100
LIB_DIR=""

die() {
    echo "run_benchmark.sh: $*" >&2
    exit 64
}

need() {
    [ "$#" -ge 2 ] || die "$1 needs a value"
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --benchmark-model) need "$@"; BM=$2; shift 2 ;;
        --out) need "$@"; OUT=$2; shift 2 ;;
        --sysfs) need "$@"; SYSFS=$2; shift 2 ;;
        --uptime) need "$@"; UPTIME=$2; shift 2 ;;
        --idle-ms) need "$@"; IDLE_MS=$2; shift 2 ;;
        --sample-ms) need "$@"; SAMPLE_MS=$2; shift 2 ;;
        --lib-dir) need "$@"; LIB_DIR=$2; shift 2 ;;
        --) shift; break ;;
        *) die "unknown option '$1'" ;;
    esac
done

[ -n "$BM" ] || die "--benchmark-model is required"
[ -n "$OUT" ] || die "--out is required"
[ -x "$BM" ] || die "benchmark_model '$BM' is not an executable file"
[ -r "$UPTIME" ] || die "uptime file '$UPTIME' is not readable"
case "$IDLE_MS" in '' | *[!0-9]*) die "--idle-ms '$IDLE_MS' is not a whole number" ;; esac
case "$SAMPLE_MS" in '' | *[!0-9]*) die "--sample-ms '$SAMPLE_MS' is not a whole number" ;; esac
[ "$SAMPLE_MS" -gt 0 ] || die "--sample-ms must be positive"

PART="$OUT.part"
if ! printf '' 2>/dev/null > "$PART"; then
    echo "run_benchmark.sh: cannot write $PART" >&2
    exit 65
fi
rm -f "$PART.power" "$PART.bm" "$PART.status"
SLEEP_S=$(printf '%d.%03d' $((SAMPLE_MS / 1000)) $((SAMPLE_MS % 1000)))

now() {
    read -r NOW _rest < "$UPTIME"
}

# The battery: power_supply/battery on most phones, else the first supply whose type is Battery.
BAT=""
if [ -r "$SYSFS/class/power_supply/battery/current_now" ] && [ -r "$SYSFS/class/power_supply/battery/voltage_now" ]; then
    BAT="$SYSFS/class/power_supply/battery"
else
    for supply in "$SYSFS"/class/power_supply/*; do
        kind=""
        { read -r kind < "$supply/type"; } 2>/dev/null
        if [ "$kind" = "Battery" ] && [ -r "$supply/current_now" ] && [ -r "$supply/voltage_now" ]; then
            BAT=$supply
            break
        fi
    done
fi

props() {
    command -v getprop > /dev/null 2>&1 || return 0
    for key in ro.product.manufacturer ro.product.model ro.soc.model ro.board.platform ro.build.version.release ro.build.version.sdk; do
        value=$(getprop "$key" 2>/dev/null)
        [ -n "$value" ] && echo "prop $key $value"
    done
    return 0
}

battery_status() {  # $1: start | end
    [ -n "$BAT" ] || return 0
    status=""
    { read -r status < "$BAT/status"; } 2>/dev/null
    echo "battery_status $1 ${status:-unknown}"
}

thermal() {  # $1: start | end -> "thermal PHASE ZONE MILLI_C TYPE"
    for zone in "$SYSFS"/class/thermal/thermal_zone*; do
        [ -r "$zone/temp" ] || continue
        temp=""
        kind=""
        { read -r temp < "$zone/temp"; } 2>/dev/null
        { read -r kind < "$zone/type"; } 2>/dev/null
        [ -n "$temp" ] && echo "thermal $1 ${zone##*/} $temp ${kind:-unknown}"
    done
    return 0
}

sample_power() {  # $1: idle | run; $2: number of samples (empty: until killed) -> "power PHASE UPTIME uA uV"
    count=0
    while [ -z "${2:-}" ] || [ "$count" -lt "$2" ]; do
        now
        current=""
        voltage=""
        { read -r current < "$BAT/current_now"; } 2>/dev/null
        { read -r voltage < "$BAT/voltage_now"; } 2>/dev/null
        echo "power $1 $NOW $current $voltage"
        count=$((count + 1))
        sleep "$SLEEP_S"
    done
}

{
    echo "$FORMAT"
    props
    echo "meta sample_ms $SAMPLE_MS"
    echo "meta idle_ms $IDLE_MS"
    echo "meta battery ${BAT:-none}"
    battery_status start
    thermal start
} >> "$PART"

if [ -n "$BAT" ] && [ "$IDLE_MS" -gt 0 ]; then
    sample_power idle $(((IDLE_MS + SAMPLE_MS - 1) / SAMPLE_MS)) >> "$PART"
fi

if [ -n "$LIB_DIR" ]; then
    LD_LIBRARY_PATH="$LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    ADSP_LIBRARY_PATH="$LIB_DIR;/vendor/dsp/cdsp;/vendor/lib/rfsa/adsp;/system/lib/rfsa/adsp;/dsp"
    export LD_LIBRARY_PATH ADSP_LIBRARY_PATH
fi

SAMPLER=""
if [ -n "$BAT" ]; then
    sample_power run > "$PART.power" &
    SAMPLER=$!
fi

now
echo "mark run_start $NOW" >> "$PART"
# No pipefail in POSIX sh: benchmark_model's status travels through a file.
{
    "$BM" "$@" 2>&1
    echo "$?" > "$PART.status"
} | while IFS= read -r line || [ -n "$line" ]; do
    read -r stamp _rest < "$UPTIME"
    printf 'bm %s %s\n' "$stamp" "$line"
done > "$PART.bm"
now
echo "mark run_end $NOW" >> "$PART"

if [ -n "$SAMPLER" ]; then
    kill "$SAMPLER" 2>/dev/null
    wait "$SAMPLER" 2>/dev/null
fi

code=""
{ read -r code < "$PART.status"; } 2>/dev/null
{
    battery_status end
    thermal end
    echo "exit ${code:-unknown}"
    [ -f "$PART.power" ] && cat "$PART.power"
    cat "$PART.bm"
    echo "end"
} >> "$PART"
rm -f "$PART.power" "$PART.bm" "$PART.status"
mv -f "$PART" "$OUT" || exit 65
exit 0
