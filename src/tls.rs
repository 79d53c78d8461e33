//! Whom svc trusts when a URL asks for TLS (`sslmode=…`, `rediss://`,
//! `amqps://`): the system's root certificates, plus the private CA of
//! `SVC_TLS_CA_FILE` when one is set. Every client that speaks TLS (sqlx,
//! redis, lapin) is given the same [`TlsSettings`]; none falls back to
//! plaintext when a certificate does not verify.

use std::{
    path::Path,
    sync::{Arc, Once},
};

/// The extra trust svc's clients place in a private CA, read once at start.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// PEM text of one or more CA certificates, added to the system's roots.
    ca_pem: Option<Arc<str>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("private_ca", &self.ca_pem.is_some())
            .finish()
    }
}

impl TlsSettings {
    /// Reads a PEM file of CA certificates; refuses one that cannot be read
    /// or holds no certificate, so a bad path stops the command at start.
    pub fn from_ca_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {} ({err})", path.display()))?;
        let certificates = pem.matches("-----BEGIN CERTIFICATE-----").count();
        if certificates == 0 {
            return Err(format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        Ok(Self {
            ca_pem: Some(pem.into()),
        })
    }

    /// The private CA's PEM text, if one is set.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// redis-rs's form. Its `root_cert` replaces the system's roots rather
    /// than adding to them, so the system's roots are passed along with the
    /// private CA; `None` when there is no private CA (redis-rs then loads
    /// the system's roots itself).
    pub fn for_redis(&self) -> Option<redis::TlsCertificates> {
        use base64::Engine;
        let private = self.ca_pem.as_deref()?;
        let mut pem = private.to_owned();
        for cert in rustls_native_certs::load_native_certs().certs {
            pem.push_str("\n-----BEGIN CERTIFICATE-----\n");
            let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
            for line in encoded.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
        }
        Some(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.into_bytes()),
        })
    }

    /// lapin's form: the private CA added to the system's roots.
    pub fn for_lapin(&self) -> lapin::tcp::OwnedTLSConfig {
        lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_pem.as_deref().map(str::to_owned),
        }
    }
}

/// Makes ring the process's rustls crypto provider, once. The build links
/// rustls with both ring (svc's choice) and aws-lc-rs (through the load
/// test's HTTP client); with two, rustls picks neither by itself and a TLS
/// handshake would panic. Called wherever a TLS client may be built.
pub fn install_crypto_provider() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // Err only if something else installed one first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The clap value parser of `SVC_TLS_CA_FILE`.
pub fn parse_ca_file(text: &str) -> Result<TlsSettings, String> {
    TlsSettings::from_ca_file(Path::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_or_empty_ca_file_is_refused() {
        assert!(parse_ca_file("/nonexistent/ca.pem").is_err());
        let dir = std::env::temp_dir().join(format!("svc-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        assert!(
            parse_ca_file(empty.to_str().unwrap())
                .unwrap_err()
                .contains("no PEM certificate")
        );
        let good = dir.join("ca.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(
            parse_ca_file(good.to_str().unwrap())
                .unwrap()
                .ca_pem()
                .is_some()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
