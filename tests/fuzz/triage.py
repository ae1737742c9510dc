#!/usr/bin/env python3
"""Triage of fuzz artifacts: is the fault in our code or inside a third-party library?

    tests/fuzz/triage.py BINARY ARTIFACT...

Each artifact (crash-*, leak-*, timeout-*, oom-* written by libFuzzer) is run once more with
BINARY; the first stack frame of the report that is neither sanitizer/libFuzzer runtime, libc nor
the C++ standard library decides where the fault is:
  lib:<name> <function>   inside a library listed in THIRD_PARTY (e.g. Debian's libhdf5 1.10.8)
  ours <frame>            in our code (engine/, harness/, tests/fuzz/): a bug to fix
  gone                    the input no longer fails (already fixed)
For a leak report every leaked allocation is checked; one allocated from our code makes it ours.
Prints one line per artifact and exits 1 when any artifact is ours (or cannot be classified).
scripts/fuzz uses this for the dump target, whose reader sits on libhdf5.
"""
import re
import subprocess
import sys

THIRD_PARTY = ("libhdf5",)
# Functions and locations that are not where a fault is: sanitizer and libFuzzer runtime, the C
# and C++ runtime, and the fuzz target's entry point.
RUNTIME_FUNC = re.compile(
    r"^(__sanitizer|__asan|__lsan|__ubsan|__interceptor|fuzzer::|malloc$|calloc$|realloc$|free$|"
    r"operator new|operator delete|__libc_|std::|void std::|__gnu_cxx|_start$|strdup$|memcpy$|"
    r"memmove$|memset$|__memcpy|__memmove|__memset|main$|LLVMFuzzerTestOneInput$|abort$|raise$|"
    r"__pthread_kill|pthread_kill)")
RUNTIME_LOC = re.compile(r"libc\.so|libstdc\+\+|libgcc|/tests/fuzz/fuzz_util\.h|sysdeps/|stdlib/|"
                         r"nptl/|csu/|signal/")
FRAME = re.compile(r"^\s*#\d+\s+0x[0-9a-f]+\s+(?:in\s+)?(.*)$", re.M)
LOCATION = re.compile(r"^(.*?)\s*(\(?\S*/\S*\)?)\s*$")  # the last token holding a '/'  


def first_real_frame(lines):
    for line in lines:
        m = FRAME.match(line)
        if not m:
            continue
        text = re.sub(r"\s*\(BuildId.*", "", m.group(1)).strip()
        loc_m = LOCATION.match(text)
        func, loc = (loc_m.group(1).strip(), loc_m.group(2)) if loc_m else (text, "")
        lib = next((l for l in THIRD_PARTY if l in loc), None)
        if lib:
            return "lib:%s %s" % (lib, func or "?")
        if RUNTIME_FUNC.search(func) or RUNTIME_LOC.search(loc):
            continue
        return "ours %s %s" % (func, loc)
    return None


def stacks(report):
    """Splits a report into its stacks (one per leak for LeakSanitizer)."""
    out, cur = [], []
    for line in report.splitlines():
        if FRAME.match(line):
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def replay(binary, artifact, extra=()):
    p = subprocess.run([binary, "-runs=1", "-timeout=20", *extra, artifact], capture_output=True,
                       timeout=300)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def classify(binary, artifact):
    rc, report = replay(binary, artifact)
    if rc == 0:
        return "gone"
    if "out-of-memory" in report and not FRAME.search(report.split("out-of-memory", 1)[1]):
        # The RSS watchdog reports no stack; a low malloc limit stops the input at its largest
        # allocation instead, with a stack (a CI run once failed on such a report counted "ours").
        rc2, report2 = replay(binary, artifact, ("-malloc_limit_mb=256",))
        if rc2 != 0 and FRAME.search(report2):
            report = report2
    # Only the part after the first sanitizer / libFuzzer error line is the report.
    at = re.search(r"ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer)|"
                   r"runtime error:", report)
    body = report[at.start():] if at else report
    found = [f for f in (first_real_frame(s) for s in stacks(body)) if f]
    if "LeakSanitizer" in body[:200]:
        ours = [f for f in found if not f.startswith("lib:")]
        return ours[0] if ours else (found[0] if found else "ours (unclassified leak)")
    return found[0] if found else "ours (unclassified: no frame)"


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    binary, status = sys.argv[1], 0
    for a in sys.argv[2:]:
        verdict = classify(binary, a)
        print("%-60s %s" % (a, verdict))
        if verdict.startswith("ours"):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
