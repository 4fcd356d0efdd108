#include "server/security/peer_tls.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpc/grpc_security_constants.h"

namespace tessera::server::security {
namespace {

constexpr char kNamePrefix[] = "node-";

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is not set"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

template <typename T, void (*Free)(T*)>
struct OsslFree {
  void operator()(T* p) const { Free(p); }
};
template <typename T, void (*Free)(T*)>
using OsslPtr = std::unique_ptr<T, OsslFree<T, Free>>;
using X509Ptr = OsslPtr<X509, X509_free>;
using KeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;
using BioPtr = OsslPtr<BIO, BIO_free_all>;
using StorePtr = OsslPtr<X509_STORE, X509_STORE_free>;
using StoreCtxPtr = OsslPtr<X509_STORE_CTX, X509_STORE_CTX_free>;

BioPtr MemBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

std::string CommonName(X509* cert) {
  char name[256] = {0};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, name, sizeof(name)) <
      0) {
    return "";
  }
  return name;
}

// Checks what a handshake would otherwise reject later, obscurely.
absl::Status CheckFiles(const PeerTlsFiles& pem, const PeerTlsFiles& paths, uint64_t self) {
  BioPtr cert_bio = MemBio(pem.cert);
  X509Ptr cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--peer-cert ", paths.cert, " holds no PEM certificate"));
  }
  BioPtr key_bio = MemBio(pem.key);
  KeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--peer-key ", paths.key, " holds no PEM private key"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--peer-key ", paths.key, " does not match --peer-cert ", paths.cert));
  }
  StorePtr store(X509_STORE_new());
  BioPtr ca_bio = MemBio(pem.ca);
  int cas = 0;
  while (X509* ca = PEM_read_bio_X509(ca_bio.get(), nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store.get(), ca);
    X509_free(ca);
    ++cas;
  }
  if (cas == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--peer-ca ", paths.ca, " holds no PEM certificate"));
  }
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr) != 1 ||
      X509_verify_cert(ctx.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--peer-cert ", paths.cert, " is not valid under --peer-ca ", paths.ca, ": ",
                     X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get()))));
  }
  const std::string want = MemberCertName(self);
  if (CommonName(cert.get()) != want) {
    return absl::InvalidArgumentError(absl::StrCat("--peer-cert ", paths.cert, " names '",
                                                   CommonName(cert.get()), "', not '", want,
                                                   "' (this node's --node-id)"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string MemberCertName(uint64_t id) { return absl::StrCat(kNamePrefix, id); }

PeerCredentials PeerCredentials::Insecure() { return PeerCredentials(); }

absl::StatusOr<PeerCredentials> PeerCredentials::Load(const PeerTlsFiles& files, uint64_t self) {
  PeerCredentials c;
  c.secure_ = true;
  absl::StatusOr<std::string> cert = ReadFile(files.cert, "--peer-cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile(files.key, "--peer-key");
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> ca = ReadFile(files.ca, "--peer-ca");
  if (!ca.ok()) return ca.status();
  c.pem_ = {.cert = *std::move(cert), .key = *std::move(key), .ca = *std::move(ca)};
  absl::Status checked = CheckFiles(c.pem_, files, self);
  if (!checked.ok()) return checked;
  return c;
}

std::shared_ptr<grpc::ServerCredentials> PeerCredentials::server() const {
  if (!secure_) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = pem_.ca;
  options.pem_key_cert_pairs.push_back({.private_key = pem_.key, .cert_chain = pem_.cert});
  return grpc::SslServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> PeerCredentials::channel() const {
  if (!secure_) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = pem_.ca;
  options.pem_private_key = pem_.key;
  options.pem_cert_chain = pem_.cert;
  return grpc::SslCredentials(options);
}

void PeerCredentials::ConfigureChannelTo(uint64_t id, grpc::ChannelArguments* args) const {
  if (secure_) args->SetSslTargetNameOverride(MemberCertName(id));
}

absl::StatusOr<uint64_t> CertifiedPeerId(const grpc::AuthContext& context) {
  if (!context.IsPeerAuthenticated()) {
    return absl::UnauthenticatedError("the peer presented no verified certificate");
  }
  std::vector<grpc::string_ref> names = context.FindPropertyValues("x509_common_name");
  if (names.size() != 1) {
    return absl::UnauthenticatedError("the peer certificate has no single common name");
  }
  const absl::string_view name(names[0].data(), names[0].size());
  uint64_t id = 0;
  if (!absl::StartsWith(name, kNamePrefix) ||
      !absl::SimpleAtoi(name.substr(sizeof(kNamePrefix) - 1), &id) || id == 0) {
    return absl::UnauthenticatedError(
        absl::StrCat("the peer certificate names '", name, "', not node-<id>"));
  }
  return id;
}

}  // namespace tessera::server::security
