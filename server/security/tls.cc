#include "server/security/tls.h"

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
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace tessera::server::security {
namespace {

constexpr char kNamePrefix[] = "node-";

// `what`: the flag and the path, for errors.
absl::StatusOr<std::string> ReadFile(const std::string& path, const std::string& what) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(what, "is not set"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what));
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
absl::Status CheckFiles(const TlsFiles& paths, absl::string_view flags, uint64_t self) {
  const std::string cert_flag = absl::StrCat(flags, "-cert ", paths.cert);
  const std::string key_flag = absl::StrCat(flags, "-key ", paths.key);
  const std::string ca_flag = absl::StrCat(flags, "-ca ", paths.ca);
  absl::StatusOr<std::string> cert_pem = ReadFile(paths.cert, cert_flag);
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadFile(paths.key, key_flag);
  if (!key_pem.ok()) return key_pem.status();
  absl::StatusOr<std::string> ca_pem = ReadFile(paths.ca, ca_flag);
  if (!ca_pem.ok()) return ca_pem.status();
  BioPtr cert_bio = MemBio(*cert_pem);
  X509Ptr cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(cert_flag, " holds no PEM certificate"));
  }
  BioPtr key_bio = MemBio(*key_pem);
  KeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(key_flag, " holds no PEM private key"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(key_flag, " does not match ", cert_flag));
  }
  StorePtr store(X509_STORE_new());
  BioPtr ca_bio = MemBio(*ca_pem);
  int cas = 0;
  while (X509* ca = PEM_read_bio_X509(ca_bio.get(), nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store.get(), ca);
    X509_free(ca);
    ++cas;
  }
  if (cas == 0)
    return absl::InvalidArgumentError(absl::StrCat(ca_flag, " holds no PEM certificate"));
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr) != 1 ||
      X509_verify_cert(ctx.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_flag, " is not valid under ", ca_flag, ": ",
                     X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get()))));
  }
  const std::string want = MemberCertName(self);
  if (CommonName(cert.get()) != want) {
    return absl::InvalidArgumentError(absl::StrCat(cert_flag, " names '", CommonName(cert.get()),
                                                   "', not '", want, "' (this node's --node-id)"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string MemberCertName(uint64_t id) { return absl::StrCat(kNamePrefix, id); }

TlsCredentials TlsCredentials::Insecure() { return TlsCredentials(); }

absl::StatusOr<TlsCredentials> TlsCredentials::Load(const TlsFiles& files, uint64_t self,
                                                    absl::string_view flags) {
  absl::Status checked = CheckFiles(files, flags, self);
  if (!checked.ok()) return checked;
  TlsCredentials c;
  c.files_ = files;
  c.flags_ = std::string(flags);
  c.self_ = self;
  c.provider_ = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.ca, kReloadSeconds);
  return c;
}

absl::Status TlsCredentials::Recheck() const {
  if (!secure()) return absl::OkStatus();
  return CheckFiles(files_, flags_, self_);
}

std::shared_ptr<grpc::ServerCredentials> TlsCredentials::server(ClientCertificates client) const {
  if (!secure()) return grpc::InsecureServerCredentials();
  grpc::experimental::TlsServerCredentialsOptions options(provider_);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(client == ClientCertificates::kRequired
                                    ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                    : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> TlsCredentials::channel() const {
  if (!secure()) return grpc::InsecureChannelCredentials();
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider_);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  options.set_certificate_verifier(
      std::make_shared<grpc::experimental::HostNameCertificateVerifier>());
  return grpc::experimental::TlsCredentials(options);
}

void TlsCredentials::ConfigureChannelTo(uint64_t id, grpc::ChannelArguments* args) const {
  if (secure()) args->SetSslTargetNameOverride(MemberCertName(id));
}

std::optional<std::string> CertifiedName(const grpc::AuthContext& context) {
  if (!context.IsPeerAuthenticated()) return std::nullopt;
  std::vector<grpc::string_ref> names = context.FindPropertyValues("x509_common_name");
  if (names.size() != 1) return std::nullopt;
  return std::string(names[0].data(), names[0].size());
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
