#include "tests/chaos/history.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "proto/status_macros.h"

namespace tessera::chaos {
namespace {

constexpr char kAbsent[] = "~";

bool NeedsEscape(unsigned char c) {
  return c < '!' || c > '~' || c == '%' || c == '=' || c == ',' || c == '~';
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

std::string EscapeList(const std::vector<std::string>& items) {
  std::vector<std::string> escaped;
  escaped.reserve(items.size());
  for (const std::string& s : items) escaped.push_back(EscapeValue(s));
  return absl::StrJoin(escaped, ",");
}

std::string EscapeValues(const std::vector<Value>& items) {
  std::vector<std::string> escaped;
  escaped.reserve(items.size());
  for (const Value& v : items) escaped.push_back(EscapeValue(v));
  return absl::StrJoin(escaped, ",");
}

absl::StatusOr<std::vector<Value>> UnescapeList(absl::string_view s) {
  std::vector<Value> out;
  if (s.empty()) return out;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    TESSERA_ASSIGN_OR_RETURN(Value v, UnescapeValue(part));
    out.push_back(std::move(v));
  }
  return out;
}

std::string RelativeTime(int64_t t, int64_t base_ns) {
  if (t == kNever) return "never";
  int64_t d = t - base_ns;
  if (d > -10'000 && d < 10'000) return absl::StrCat(d, "ns");
  return absl::StrFormat("%.3fms", static_cast<double>(d) / 1e6);
}

absl::StatusOr<OpKind> ParseKind(absl::string_view s) {
  for (OpKind k : {OpKind::kPut, OpKind::kGet, OpKind::kDelete, OpKind::kCas, OpKind::kTxnRead,
                   OpKind::kTransfer}) {
    if (s == OpKindName(k)) return k;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown op kind '", s, "'"));
}

// The name=value fields of one line.
class Fields {
 public:
  static absl::StatusOr<Fields> Parse(const std::vector<absl::string_view>& words) {
    Fields f;
    for (size_t i = 1; i < words.size(); ++i) {
      size_t eq = words[i].find('=');
      if (eq == absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat("field without '=': '", words[i], "'"));
      }
      f.map_[words[i].substr(0, eq)] = words[i].substr(eq + 1);
    }
    return f;
  }

  bool Has(absl::string_view name) const { return map_.contains(name); }

  absl::StatusOr<absl::string_view> Raw(absl::string_view name) const {
    auto it = map_.find(name);
    if (it == map_.end()) return absl::InvalidArgumentError(absl::StrCat("missing field ", name));
    return it->second;
  }

  absl::StatusOr<int64_t> Int(absl::string_view name) const {
    TESSERA_ASSIGN_OR_RETURN(absl::string_view raw, Raw(name));
    int64_t v = 0;
    if (!absl::SimpleAtoi(raw, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("field ", name, " is not an integer"));
    }
    return v;
  }

  absl::StatusOr<Value> Val(absl::string_view name) const {
    TESSERA_ASSIGN_OR_RETURN(absl::string_view raw, Raw(name));
    return UnescapeValue(raw);
  }

  absl::StatusOr<std::string> Str(absl::string_view name) const {
    TESSERA_ASSIGN_OR_RETURN(Value v, Val(name));
    if (!v.has_value()) return absl::InvalidArgumentError(absl::StrCat("field ", name, " is ~"));
    return *v;
  }

  absl::StatusOr<std::vector<std::string>> StrList(absl::string_view name) const {
    TESSERA_ASSIGN_OR_RETURN(absl::string_view raw, Raw(name));
    TESSERA_ASSIGN_OR_RETURN(std::vector<Value> vs, UnescapeList(raw));
    std::vector<std::string> out;
    for (Value& v : vs) {
      if (!v.has_value()) return absl::InvalidArgumentError(absl::StrCat("~ in list ", name));
      out.push_back(*std::move(v));
    }
    return out;
  }

  absl::StatusOr<std::vector<Value>> ValList(absl::string_view name) const {
    TESSERA_ASSIGN_OR_RETURN(absl::string_view raw, Raw(name));
    return UnescapeList(raw);
  }

 private:
  absl::flat_hash_map<absl::string_view, absl::string_view> map_;
};

absl::Status ParseInvoke(const Fields& f, Op* op) {
  TESSERA_ASSIGN_OR_RETURN(op->id, f.Int("id"));
  TESSERA_ASSIGN_OR_RETURN(op->process, f.Int("p"));
  TESSERA_ASSIGN_OR_RETURN(op->invoke_ns, f.Int("t"));
  TESSERA_ASSIGN_OR_RETURN(absl::string_view kind, f.Raw("f"));
  TESSERA_ASSIGN_OR_RETURN(op->kind, ParseKind(kind));
  switch (op->kind) {
    case OpKind::kPut: {
      TESSERA_ASSIGN_OR_RETURN(op->key, f.Str("k"));
      TESSERA_ASSIGN_OR_RETURN(op->value, f.Str("v"));
      break;
    }
    case OpKind::kGet:
    case OpKind::kDelete: {
      TESSERA_ASSIGN_OR_RETURN(op->key, f.Str("k"));
      break;
    }
    case OpKind::kCas: {
      TESSERA_ASSIGN_OR_RETURN(op->key, f.Str("k"));
      TESSERA_ASSIGN_OR_RETURN(op->expected, f.Val("old"));
      TESSERA_ASSIGN_OR_RETURN(op->value, f.Str("v"));
      break;
    }
    case OpKind::kTxnRead: {
      TESSERA_ASSIGN_OR_RETURN(op->keys, f.StrList("ks"));
      break;
    }
    case OpKind::kTransfer: {
      TESSERA_ASSIGN_OR_RETURN(op->keys, f.StrList("ks"));
      if (op->keys.size() != 2) return absl::InvalidArgumentError("transfer needs ks=from,to");
      TESSERA_ASSIGN_OR_RETURN(op->amount, f.Int("amount"));
      break;
    }
  }
  op->outcome = Outcome::kUnknown;
  op->complete_ns = kNever;
  return absl::OkStatus();
}

absl::Status ParseCompletion(const Fields& f, Outcome outcome, Op* op) {
  TESSERA_ASSIGN_OR_RETURN(int64_t t, f.Int("t"));
  if (t < op->invoke_ns) return absl::InvalidArgumentError("completion before its invoke");
  op->outcome = outcome;
  op->complete_ns = t;
  if (outcome != Outcome::kOk) return absl::OkStatus();
  switch (op->kind) {
    case OpKind::kGet: {
      TESSERA_ASSIGN_OR_RETURN(op->value, f.Val("v"));
      break;
    }
    case OpKind::kDelete:
      if (f.Has("existed")) {
        TESSERA_ASSIGN_OR_RETURN(int64_t e, f.Int("existed"));
        op->existed = e != 0;
      }
      break;
    case OpKind::kTxnRead: {
      TESSERA_ASSIGN_OR_RETURN(op->values, f.ValList("vs"));
      if (op->values.size() != op->keys.size()) {
        return absl::InvalidArgumentError("txn_read: vs and ks differ in length");
      }
      break;
    }
    default:
      break;
  }
  return absl::OkStatus();
}

absl::Status ParseLine(absl::string_view line, History* h,
                       absl::flat_hash_map<int64_t, size_t>* index,
                       absl::flat_hash_map<int64_t, bool>* completed) {
  std::vector<absl::string_view> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
  if (words.empty() || words[0].front() == '#') return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(Fields f, Fields::Parse(words));
  const absl::string_view word = words[0];
  if (word == "invoke") {
    Op op;
    TESSERA_RETURN_IF_ERROR(ParseInvoke(f, &op));
    if (index->contains(op.id)) return absl::InvalidArgumentError("duplicate op id");
    (*index)[op.id] = h->ops.size();
    h->ops.push_back(std::move(op));
    return absl::OkStatus();
  }
  if (word == "ok" || word == "fail" || word == "info") {
    TESSERA_ASSIGN_OR_RETURN(int64_t id, f.Int("id"));
    auto it = index->find(id);
    if (it == index->end()) return absl::InvalidArgumentError("completion of an unknown op id");
    if ((*completed)[id]) return absl::InvalidArgumentError("op completed twice");
    (*completed)[id] = true;
    Outcome outcome = word == "ok"     ? Outcome::kOk
                      : word == "fail" ? Outcome::kFail
                                       : Outcome::kUnknown;
    return ParseCompletion(f, outcome, &h->ops[it->second]);
  }
  if (word == "final") {
    TESSERA_ASSIGN_OR_RETURN(std::string key, f.Str("k"));
    TESSERA_ASSIGN_OR_RETURN(Value v, f.Val("v"));
    h->final_state[key] = std::move(v);
    return absl::OkStatus();
  }
  if (word == "bank") {
    BankConfig config;
    TESSERA_ASSIGN_OR_RETURN(config.accounts, f.StrList("ks"));
    TESSERA_ASSIGN_OR_RETURN(config.total, f.Int("total"));
    h->bank = std::move(config);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown line type '", word, "'"));
}

}  // namespace

absl::string_view OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kPut:
      return "put";
    case OpKind::kGet:
      return "get";
    case OpKind::kDelete:
      return "delete";
    case OpKind::kCas:
      return "cas";
    case OpKind::kTxnRead:
      return "txn_read";
    case OpKind::kTransfer:
      return "transfer";
  }
  return "?";
}

absl::string_view VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kOk:
      return "ok";
    case Verdict::kViolation:
      return "VIOLATION";
    case Verdict::kUnknown:
      return "unknown";
  }
  return "?";
}

absl::string_view OutcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kOk:
      return "ok";
    case Outcome::kFail:
      return "fail";
    case Outcome::kUnknown:
      return "info";
  }
  return "?";
}

std::string EscapeValue(const Value& v) {
  if (!v.has_value()) return kAbsent;
  std::string out;
  out.reserve(v->size());
  for (char ch : *v) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (NeedsEscape(c)) {
      absl::StrAppendFormat(&out, "%%%02X", c);
    } else {
      out.push_back(ch);
    }
  }
  return out;
}

absl::StatusOr<Value> UnescapeValue(absl::string_view s) {
  if (s == kAbsent) return Value();
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) {
      return absl::InvalidArgumentError("truncated %XX escape");
    }
    int hi = HexDigit(s[i + 1]);
    int lo = HexDigit(s[i + 2]);
    if (hi < 0 || lo < 0) return absl::InvalidArgumentError("bad %XX escape");
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return Value(std::move(out));
}

std::string DisplayValue(const Value& v) {
  if (!v.has_value()) return "<absent>";
  return absl::StrCat("\"", absl::CHexEscape(*v), "\"");
}

std::string DescribeOp(const Op& op, int64_t base_ns) {
  std::string s = absl::StrCat("#", op.id, " p", op.process, " ", OpKindName(op.kind));
  switch (op.kind) {
    case OpKind::kPut:
      absl::StrAppend(&s, " ", DisplayValue(op.key), " := ", DisplayValue(op.value));
      break;
    case OpKind::kGet:
      absl::StrAppend(&s, " ", DisplayValue(op.key));
      if (op.outcome == Outcome::kOk) absl::StrAppend(&s, " -> ", DisplayValue(op.value));
      break;
    case OpKind::kDelete:
      absl::StrAppend(&s, " ", DisplayValue(op.key));
      if (op.existed.has_value()) absl::StrAppend(&s, *op.existed ? " (existed)" : " (was absent)");
      break;
    case OpKind::kCas:
      absl::StrAppend(&s, " ", DisplayValue(op.key), " ", DisplayValue(op.expected), " -> ",
                      DisplayValue(op.value));
      if (op.outcome == Outcome::kFail) absl::StrAppend(&s, " (compare failed)");
      break;
    case OpKind::kTxnRead: {
      absl::StrAppend(&s, " [");
      for (size_t i = 0; i < op.keys.size(); ++i) {
        absl::StrAppend(&s, i ? ", " : "", DisplayValue(op.keys[i]));
        if (i < op.values.size()) absl::StrAppend(&s, "=", DisplayValue(op.values[i]));
      }
      absl::StrAppend(&s, "]");
      break;
    }
    case OpKind::kTransfer:
      absl::StrAppend(&s, " ", op.amount, " from ",
                      DisplayValue(op.keys.empty() ? Value() : Value(op.keys[0])), " to ",
                      DisplayValue(op.keys.size() < 2 ? Value() : Value(op.keys[1])));
      break;
  }
  absl::StrAppend(&s, " ", OutcomeName(op.outcome), " [", RelativeTime(op.invoke_ns, base_ns), ", ",
                  RelativeTime(op.complete_ns, base_ns), "]");
  return s;
}

std::string InvokeLine(const Op& op) {
  std::string line = absl::StrCat("invoke id=", op.id, " p=", op.process, " t=", op.invoke_ns,
                                  " f=", OpKindName(op.kind));
  switch (op.kind) {
    case OpKind::kPut:
      absl::StrAppend(&line, " k=", EscapeValue(op.key), " v=", EscapeValue(op.value));
      break;
    case OpKind::kGet:
    case OpKind::kDelete:
      absl::StrAppend(&line, " k=", EscapeValue(op.key));
      break;
    case OpKind::kCas:
      absl::StrAppend(&line, " k=", EscapeValue(op.key), " old=", EscapeValue(op.expected),
                      " v=", EscapeValue(op.value));
      break;
    case OpKind::kTxnRead:
      absl::StrAppend(&line, " ks=", EscapeList(op.keys));
      break;
    case OpKind::kTransfer:
      absl::StrAppend(&line, " ks=", EscapeList(op.keys), " amount=", op.amount);
      break;
  }
  return line;
}

std::string CompleteLine(const Op& op) {
  std::string line = absl::StrCat(OutcomeName(op.outcome), " id=", op.id, " t=", op.complete_ns);
  if (op.outcome != Outcome::kOk) return line;
  switch (op.kind) {
    case OpKind::kGet:
      absl::StrAppend(&line, " v=", EscapeValue(op.value));
      break;
    case OpKind::kDelete:
      if (op.existed.has_value()) absl::StrAppend(&line, " existed=", *op.existed ? 1 : 0);
      break;
    case OpKind::kTxnRead:
      absl::StrAppend(&line, " vs=", EscapeValues(op.values));
      break;
    default:
      break;
  }
  return line;
}

std::string FinalLine(const std::string& key, const Value& value) {
  return absl::StrCat("final k=", EscapeValue(key), " v=", EscapeValue(value));
}

std::string BankLine(const BankConfig& config) {
  return absl::StrCat("bank total=", config.total, " ks=", EscapeList(config.accounts));
}

absl::StatusOr<History> ParseHistory(absl::string_view text) {
  History h;
  absl::flat_hash_map<int64_t, size_t> index;
  absl::flat_hash_map<int64_t, bool> completed;
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    ++line_no;
    size_t nl = text.find('\n', pos);
    if (nl == absl::string_view::npos) {
      h.truncated = true;  // a partial last line: the writer crashed mid-line
      break;
    }
    absl::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    absl::Status s = ParseLine(line, &h, &index, &completed);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": ", s.message()));
    }
  }
  for (const Op& op : h.ops) {
    if (!completed[op.id]) ++h.pending;
  }
  return h;
}

absl::StatusOr<History> ReadHistoryFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path));
  return ParseHistory(buf.str());
}

std::string FormatHistory(const History& history) {
  std::string out = "# tessera history v1\n";
  if (history.bank.has_value()) absl::StrAppend(&out, BankLine(*history.bank), "\n");
  // Events in time order (invokes before completions at equal times).
  struct Event {
    int64_t t;
    int order;  // 0 = invoke, 1 = completion
    size_t op;
  };
  std::vector<Event> events;
  for (size_t i = 0; i < history.ops.size(); ++i) {
    const Op& op = history.ops[i];
    events.push_back({op.invoke_ns, 0, i});
    if (op.complete_ns != kNever) {
      events.push_back({op.complete_ns, 1, i});
    }
  }
  std::stable_sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
    return std::tie(a.t, a.order) < std::tie(b.t, b.order);
  });
  for (const Event& e : events) {
    const Op& op = history.ops[e.op];
    absl::StrAppend(&out, e.order == 0 ? InvokeLine(op) : CompleteLine(op), "\n");
  }
  for (const auto& [key, value] : history.final_state) {
    absl::StrAppend(&out, FinalLine(key, value), "\n");
  }
  return out;
}

absl::StatusOr<std::unique_ptr<HistoryWriter>> HistoryWriter::Open(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  auto writer = std::unique_ptr<HistoryWriter>(new HistoryWriter(f));
  absl::MutexLock lock(&writer->mu_);
  TESSERA_RETURN_IF_ERROR(writer->WriteLine("# tessera history v1"));
  return writer;
}

HistoryWriter::~HistoryWriter() {
  absl::MutexLock lock(&mu_);
  if (file_ != nullptr) std::fclose(file_);
}

absl::Status HistoryWriter::WriteLine(const std::string& line) {
  std::string buf = line + "\n";
  if (std::fwrite(buf.data(), 1, buf.size(), file_) != buf.size() || std::fflush(file_) != 0) {
    return absl::InternalError(absl::StrCat("history write failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status HistoryWriter::Invoke(Op* op) {
  absl::MutexLock lock(&mu_);
  op->id = next_id_++;
  return WriteLine(InvokeLine(*op));
}

absl::Status HistoryWriter::Complete(const Op& op) {
  absl::MutexLock lock(&mu_);
  return WriteLine(CompleteLine(op));
}

absl::Status HistoryWriter::Final(const std::string& key, const Value& value) {
  absl::MutexLock lock(&mu_);
  return WriteLine(FinalLine(key, value));
}

absl::Status HistoryWriter::Bank(const BankConfig& config) {
  absl::MutexLock lock(&mu_);
  return WriteLine(BankLine(config));
}

absl::Status HistoryWriter::Sync() {
  absl::MutexLock lock(&mu_);
  if (std::fflush(file_) != 0 || ::fsync(fileno(file_)) != 0) {
    return absl::InternalError(absl::StrCat("history sync failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace tessera::chaos
