// Report JSON builders and readers (ds4/json_build.h).
#include "ds4/json_build.h"

#include <cmath>

#include "ds4/error.h"

namespace ds4 {

Json jnull() { return Json{}; }
Json jbool(bool v) {
  Json j;
  j.kind = Json::Bool;
  j.boolean = v;
  return j;
}
Json jint(int64_t v) {
  Json j;
  j.kind = Json::Number;
  j.number = static_cast<double>(v);
  j.integer = v;
  j.is_integer = true;
  return j;
}
Json jnum(double v) {
  if (std::isnan(v)) return jstr("nan");
  if (std::isinf(v)) return jstr(v > 0 ? "inf" : "-inf");
  Json j;
  j.kind = Json::Number;
  j.number = v;
  return j;
}
Json jstr(const std::string& v) {
  Json j;
  j.kind = Json::String;
  j.string = v;
  return j;
}
Json jarr(std::vector<Json> items) {
  Json j;
  j.kind = Json::Array;
  j.array = std::move(items);
  return j;
}
Json jobj(Json::Members members) {
  Json j;
  j.kind = Json::Object;
  j.members = std::move(members);
  return j;
}
Json& jput(Json& obj, const std::string& key, Json v) {
  obj.members.emplace_back(key, std::move(v));
  return obj;
}
Json jnums(const std::vector<double>& v) {
  Json a = jarr();
  a.array.reserve(v.size());
  for (double x : v) a.array.push_back(jnum(x));
  return a;
}
Json jints(const std::vector<int64_t>& v) {
  Json a = jarr();
  for (int64_t x : v) a.array.push_back(jint(x));
  return a;
}
Json jstrs(const std::vector<std::string>& v) {
  Json a = jarr();
  for (const std::string& x : v) a.array.push_back(jstr(x));
  return a;
}

double jnum_of(const Json& v, double dflt) {
  if (v.is_null()) return dflt;
  if (v.is_string()) {
    if (v.string == "inf") return INFINITY;
    if (v.string == "-inf") return -INFINITY;
    if (v.string == "nan") return NAN;
    fail("JSON string '" + printable(v.string, 40) + "' is not a number");
  }
  return v.as_number();
}
double jnum_at(const Json& obj, const std::string& key, double dflt) {
  const Json* v = obj.find(key);
  return v ? jnum_of(*v, dflt) : dflt;
}
int64_t jint_at(const Json& obj, const std::string& key, int64_t dflt) {
  const Json* v = obj.find(key);
  return v && !v->is_null() ? v->as_int() : dflt;
}
std::string jstr_at(const Json& obj, const std::string& key, const std::string& dflt) {
  const Json* v = obj.find(key);
  return v && !v->is_null() ? v->as_string() : dflt;
}
bool jbool_at(const Json& obj, const std::string& key, bool dflt) {
  const Json* v = obj.find(key);
  return v && !v->is_null() ? v->as_bool() : dflt;
}
std::vector<double> jnums_of(const Json& v) {
  std::vector<double> out;
  if (v.is_null()) return out;
  for (const Json& x : v.as_array()) out.push_back(jnum_of(x, NAN));
  return out;
}

}  // namespace ds4
