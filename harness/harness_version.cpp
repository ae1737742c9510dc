// The harness library's version string (taps, dumps and drivers land in src/).
namespace ds4::harness {
const char* version() { return "0.1.0"; }
}  // namespace ds4::harness
