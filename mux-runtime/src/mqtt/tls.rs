//! TLS to the broker (`mqtts://`, docs/mqtt.md): rustls with the ring
//! provider. The broker's certificate is checked against the CA the
//! project names (`[mqtt] ca`, `--mqtt-ca`), else against the system's
//! roots (/etc/ssl/certs: what mosquitto's own clients trust by default),
//! and its name against the URL's host. A client certificate (`cert` and
//! `key`) is sent when the broker asks for one (mosquitto's
//! `require_certificate true`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::MqttError;

/// The PEM files of a TLS connection to the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the broker's certificate (else the system's).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The rustls configuration for `files`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, MqttError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &files.ca {
        Some(ca) => {
            let certs = certificates(ca)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(tls_file(ca, "holds no certificate rustls can use"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(MqttError::Tls(
                    "this machine has no CA certificates (/etc/ssl/certs; Debian: the \
                     ca-certificates package); give the broker's CA with `ca = \"FILE\"` in \
                     [mqtt] or --mqtt-ca FILE"
                        .into(),
                ));
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            if chain.is_empty() {
                return Err(tls_file(cert, "holds no certificate"));
            }
            builder
                .with_client_auth_cert(chain, private_key(key)?)
                .map_err(|e| tls_file(key, &format!("does not go with {}: {e}", cert.display())))?
        }
    };
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|e| tls_file(path, &format!("cannot be read: {e}")))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let pem = read(path)?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_file(path, &format!("is not PEM: {e}")))
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, MqttError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| tls_file(path, &format!("is not PEM: {e}")))?
        .ok_or_else(|| tls_file(path, "holds no private key (PKCS#8, PKCS#1 or SEC1 PEM)"))
}

fn tls_file(path: &Path, why: &str) -> MqttError {
    MqttError::Tls(format!("{} {why}", path.display()))
}

/// A hint for a TLS failure the broker connection reported (`why`), or
/// nothing when it is not about TLS.
pub fn hint(why: &str) -> Option<&'static str> {
    let w = why.to_ascii_lowercase();
    if w.contains("notvalidforname") {
        Some("the broker's certificate does not name the host of the URL: connect by the name it has")
    } else if w.contains("unknownissuer") || w.contains("certificate") && w.contains("invalid") {
        Some("the broker's certificate is not signed by a CA moat trusts: give its CA with `ca = \"FILE\"` in [mqtt] or --mqtt-ca FILE")
    } else if w.contains("tls") || w.contains("handshake") {
        Some("the TLS handshake with the broker failed: is the port a TLS listener (mqtts://) and does it take TLS 1.2 or 1.3?")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("ca.pem");
        let e = client_config(&TlsFiles {
            ca: Some(none.clone()),
            client: None,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("ca.pem") && e.contains("cannot be read"), "{e}");
        std::fs::write(&none, "not a certificate\n").unwrap();
        let e = client_config(&TlsFiles {
            ca: Some(none),
            client: None,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("no certificate"), "{e}");
    }

    #[test]
    fn hints_name_the_fix() {
        assert!(hint("TLS error: invalid peer certificate: UnknownIssuer")
            .unwrap()
            .contains("--mqtt-ca"));
        assert!(hint("TLS error: invalid peer certificate: NotValidForName")
            .unwrap()
            .contains("name"));
        assert_eq!(hint("Connection refused (os error 111)"), None);
    }
}
