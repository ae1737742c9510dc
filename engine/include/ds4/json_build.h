// Building and reading report JSON (ds4-parity diff, ablate, bisect, sweep, report).
//
// JSON has no inf/nan: non-finite numbers are written as the strings "inf", "-inf", "nan" and
// read back by jnum_of.
//
//   Json o = jobj();
//   jput(o, "max_abs", jnum(d.max_abs));            // "inf" when d.max_abs is infinite
//   double m = jnum_at(Json::parse(text, "x.json"), "max_abs");
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ds4/json.h"

namespace ds4 {

Json jnull();
Json jbool(bool v);
Json jint(int64_t v);
Json jnum(double v);  // NaN and +-inf become the strings "nan", "inf", "-inf"
Json jstr(const std::string& v);
Json jarr(std::vector<Json> items = {});
Json jobj(Json::Members members = {});
Json& jput(Json& obj, const std::string& key, Json v);  // appends a member; returns obj
Json jnums(const std::vector<double>& v);
Json jints(const std::vector<int64_t>& v);
Json jstrs(const std::vector<std::string>& v);

// Reading: a Number, or one of the strings above; `null` reads as `dflt`.
double jnum_of(const Json& v, double dflt = 0);
double jnum_at(const Json& obj, const std::string& key, double dflt = 0);  // absent -> dflt
int64_t jint_at(const Json& obj, const std::string& key, int64_t dflt = 0);
std::string jstr_at(const Json& obj, const std::string& key, const std::string& dflt = "");
bool jbool_at(const Json& obj, const std::string& key, bool dflt = false);
std::vector<double> jnums_of(const Json& v);

}  // namespace ds4
