//! The serving certificate of the kubelet server on :10250.
//!
//! Like upstream's `InitializeTLS`: `tlsCertFile`/`tlsPrivateKeyFile` (or the flags) when
//! given; else `<cert-dir>/kubelet.crt` and `kubelet.key`, generated at the first start when
//! they cannot be read: a CA `<node>-ca@<unix time>` and a serving certificate
//! `<node>@<unix time>` signed by it (RSA 2048, SHA-256, one year; the name as DNS SAN, or IP
//! SAN when the node name is an address), the certificate file holding both.
//!
//! Crates: OpenSSL through `openssl` (certificate generation, key conversion) and
//! `native-tls`/`tokio-native-tls` (the handshake), because the workspace already links them
//! for the image puller (`oci-client` with native-tls); rustls + rcgen would add a second TLS
//! stack and a second crypto library (ring or aws-lc) to build on a 2-core machine.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Ssl {
        what: String,
        source: openssl::error::ErrorStack,
    },
    #[error("the TLS server: {0}")]
    Acceptor(#[from] native_tls::Error),
}

fn ssl(what: &str) -> impl FnOnce(openssl::error::ErrorStack) -> TlsError + '_ {
    move |source| TlsError::Ssl {
        what: what.to_string(),
        source,
    }
}

/// Where the certificate came from, for the log.
pub struct Serving {
    pub acceptor: tokio_native_tls::TlsAcceptor,
    pub cert_file: PathBuf,
    pub generated: bool,
}

/// Builds the acceptor from the configured files or the (generated) self-signed pair.
pub fn serving(cfg: &crate::config::Config) -> Result<Serving, TlsError> {
    let (cert_file, key_file, generated) = match (&cfg.tls_cert_file, &cfg.tls_private_key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ => {
            let c = cfg.cert_dir.join("kubelet.crt");
            let k = cfg.cert_dir.join("kubelet.key");
            let readable = std::fs::metadata(&c).is_ok() && std::fs::metadata(&k).is_ok();
            if !readable {
                let (cert_pem, key_pem) = self_signed(&cfg.node_name)?;
                write(&cfg.cert_dir, &c, &cert_pem, 0o644)?;
                write(&cfg.cert_dir, &k, &key_pem, 0o600)?;
            }
            (c, k, !readable)
        }
    };
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&cert_file)?;
    let key_pem = read(&key_file)?;
    // native-tls wants PKCS#8; accept the PKCS#1/SEC1 forms users also have.
    let key = PKey::private_key_from_pem(&key_pem).map_err(ssl(&key_file.display().to_string()))?;
    let pkcs8 = key
        .private_key_to_pem_pkcs8()
        .map_err(ssl("converting the private key"))?;
    X509::stack_from_pem(&cert_pem).map_err(ssl(&cert_file.display().to_string()))?;
    let identity = native_tls::Identity::from_pkcs8(&cert_pem, &pkcs8)?;
    let acceptor = native_tls::TlsAcceptor::builder(identity)
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
        .build()?;
    Ok(Serving {
        acceptor: tokio_native_tls::TlsAcceptor::from(acceptor),
        cert_file,
        generated,
    })
}

fn write(dir: &Path, p: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: p.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(p)
        .map_err(err)?;
    f.write_all(data).map_err(err)
}

fn rsa_key() -> Result<PKey<Private>, TlsError> {
    let rsa = Rsa::generate(2048).map_err(ssl("generating an RSA key"))?;
    PKey::from_rsa(rsa).map_err(ssl("generating an RSA key"))
}

fn serial() -> Result<BigNum, TlsError> {
    let mut bn = BigNum::new().map_err(ssl("serial"))?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)
        .map_err(ssl("serial"))?;
    Ok(bn)
}

/// A CA and a serving certificate for `host` signed by it: (certificate file PEM with the
/// serving certificate then the CA, key PEM).
pub fn self_signed(host: &str) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let now = crate::now_ns() / 1_000_000_000;
    let e = ssl("building the self-signed certificate");
    let name = |cn: &str| -> Result<openssl::x509::X509Name, TlsError> {
        let mut b = X509NameBuilder::new().map_err(ssl("name"))?;
        b.append_entry_by_text("CN", cn).map_err(ssl("name"))?;
        Ok(b.build())
    };
    let not_before = Asn1Time::days_from_now(0).map_err(ssl("time"))?;
    let not_after = Asn1Time::days_from_now(365).map_err(ssl("time"))?;

    let ca_key = rsa_key()?;
    let ca_name = name(&format!("{host}-ca@{now}"))?;
    let mut ca = X509::builder().map_err(ssl("ca"))?;
    ca.set_version(2).map_err(ssl("ca"))?;
    ca.set_serial_number(serial()?.to_asn1_integer().map_err(ssl("ca"))?.as_ref())
        .map_err(ssl("ca"))?;
    ca.set_subject_name(&ca_name).map_err(ssl("ca"))?;
    ca.set_issuer_name(&ca_name).map_err(ssl("ca"))?;
    ca.set_pubkey(&ca_key).map_err(ssl("ca"))?;
    ca.set_not_before(&not_before).map_err(ssl("ca"))?;
    ca.set_not_after(&not_after).map_err(ssl("ca"))?;
    ca.append_extension(
        BasicConstraints::new()
            .critical()
            .ca()
            .build()
            .map_err(ssl("ca"))?,
    )
    .map_err(ssl("ca"))?;
    ca.append_extension(
        KeyUsage::new()
            .critical()
            .key_encipherment()
            .digital_signature()
            .key_cert_sign()
            .build()
            .map_err(ssl("ca"))?,
    )
    .map_err(ssl("ca"))?;
    ca.sign(&ca_key, MessageDigest::sha256())
        .map_err(ssl("ca"))?;
    let ca = ca.build();

    let key = rsa_key()?;
    let mut b = X509::builder().map_err(ssl("cert"))?;
    b.set_version(2).map_err(ssl("cert"))?;
    b.set_serial_number(serial()?.to_asn1_integer().map_err(ssl("cert"))?.as_ref())
        .map_err(ssl("cert"))?;
    let subject = name(&format!("{host}@{now}"))?;
    b.set_subject_name(&subject).map_err(ssl("cert"))?;
    b.set_issuer_name(ca.subject_name()).map_err(ssl("cert"))?;
    b.set_pubkey(&key).map_err(ssl("cert"))?;
    b.set_not_before(&not_before).map_err(ssl("cert"))?;
    b.set_not_after(&not_after).map_err(ssl("cert"))?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_encipherment()
            .digital_signature()
            .build()
            .map_err(ssl("cert"))?,
    )
    .map_err(ssl("cert"))?;
    b.append_extension(
        ExtendedKeyUsage::new()
            .server_auth()
            .build()
            .map_err(ssl("cert"))?,
    )
    .map_err(ssl("cert"))?;
    b.append_extension(
        BasicConstraints::new()
            .critical()
            .build()
            .map_err(ssl("cert"))?,
    )
    .map_err(ssl("cert"))?;
    let mut san = SubjectAlternativeName::new();
    if host.parse::<std::net::IpAddr>().is_ok() {
        san.ip(host);
    } else {
        san.dns(host);
    }
    let ctx = b.x509v3_context(Some(&ca), None);
    let san = san.build(&ctx).map_err(ssl("cert"))?;
    b.append_extension(san).map_err(ssl("cert"))?;
    b.sign(&ca_key, MessageDigest::sha256())
        .map_err(ssl("cert"))?;
    let cert = b.build();

    let mut pem = cert.to_pem().map_err(e)?;
    pem.extend(ca.to_pem().map_err(ssl("ca"))?);
    let key_pem = key
        .private_key_to_pem_pkcs8()
        .map_err(ssl("serializing the key"))?;
    Ok((pem, key_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_chain_verifies() {
        let (pem, key) = self_signed("node-a").expect("generate");
        let chain = X509::stack_from_pem(&pem).expect("chain");
        assert_eq!(chain.len(), 2);
        let ca_key = chain[1].public_key().expect("ca key");
        assert!(chain[0].verify(&ca_key).expect("verify"));
        let cn = chain[0]
            .subject_name()
            .entries()
            .next()
            .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
            .unwrap_or_default();
        assert!(cn.starts_with("node-a@"), "{cn}");
        let sans: Vec<String> = chain[0]
            .subject_alt_names()
            .expect("san")
            .iter()
            .filter_map(|n| n.dnsname().map(str::to_string))
            .collect();
        assert_eq!(sans, ["node-a"]);
        native_tls::Identity::from_pkcs8(&pem, &key).expect("identity");
    }
}
