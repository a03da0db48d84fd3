//! A device's key pair and self-signed certificate, kept in the state directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::id::DeviceId;

/// File name of the private key (PKCS#8 PEM, mode 0600) inside the state directory.
pub const KEY_FILE: &str = "device-key.pem";
/// File name of the self-signed certificate (PEM) inside the state directory.
pub const CERT_FILE: &str = "device-cert.pem";
/// File name of the device's human name inside the state directory.
pub const NAME_FILE: &str = "device-name";
/// Longest accepted device name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// What can go wrong loading or creating an identity. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no identity in {0}: run `cnspr init` first")]
    Missing(PathBuf),
    #[error("key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` and start again")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("key file {path} is corrupt ({reason}); restore it from a backup, or move it away to create a new identity (this changes the device ID)")]
    KeyCorrupt { path: PathBuf, reason: String },
    #[error("invalid device name {0:?}: use 1-64 characters of letters, digits, '-' and '_'")]
    BadName(String),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Cert(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One device's identity: key pair, certificate, ID and name.
pub struct Identity {
    pub id: DeviceId,
    pub name: String,
    key_pkcs8: Vec<u8>,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Checks a device name: 1-64 of `[A-Za-z0-9_-]` (it appears in handler paths as `@NAME`).
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadName(name.to_string()))
    }
}

/// A usable default name from the host name (invalid characters become `-`).
pub fn default_name() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .chars()
        .take(MAX_NAME_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "device".to_string()
    } else {
        cleaned
    }
}

impl Identity {
    /// A fresh identity that lives only in memory (tests, benchmarks).
    pub fn generate(name: &str) -> Result<Self, IdentityError> {
        validate_name(name)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Cert(e.to_string()))?;
        Self::from_key(key, name)
    }

    /// The identity whose Ed25519 key is derived from `seed` (the same seed gives the
    /// same key and device ID every time; `cnspr relay` keeps no file).
    pub fn from_seed(seed: &[u8; 32], name: &str) -> Result<Self, IdentityError> {
        validate_name(name)?;
        // PKCS#8 v1 (RFC 8410) of an Ed25519 private key: a fixed prefix, then the seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(seed);
        let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der);
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Cert(e.to_string()))?;
        Self::from_key(key, name)
    }

    fn from_key(key: rcgen::KeyPair, name: &str) -> Result<Self, IdentityError> {
        let cert = make_cert(&key)?;
        Ok(Identity {
            id: DeviceId::from_spki(&rcgen::PublicKeyData::subject_public_key_info(&key)),
            name: name.to_string(),
            key_pkcs8: key.serialize_der(),
            cert,
        })
    }

    /// Loads the identity in `dir`; fails with [`IdentityError::Missing`] when there is none.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let key_path = dir.join(KEY_FILE);
        let meta = match fs::metadata(&key_path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::Missing(dir.to_path_buf()))
            }
            Err(e) => return Err(io_err(&key_path)(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::KeyPermissions {
                path: key_path,
                mode,
            });
        }
        if meta.len() > 64 * 1024 {
            return Err(IdentityError::KeyCorrupt {
                path: key_path,
                reason: "file is far too large for a key".into(),
            });
        }
        let pem = fs::read_to_string(&key_path).map_err(|e| IdentityError::KeyCorrupt {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| IdentityError::KeyCorrupt {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        if !key.is_compatible(&rcgen::PKCS_ED25519) {
            return Err(IdentityError::KeyCorrupt {
                path: key_path,
                reason: "not an Ed25519 key".into(),
            });
        }
        let name = match fs::read_to_string(dir.join(NAME_FILE)) {
            Ok(n) => n.trim().to_string(),
            Err(_) => default_name(),
        };
        validate_name(&name)?;
        let id = DeviceId::from_spki(&rcgen::PublicKeyData::subject_public_key_info(&key));
        // The certificate is derived from the key: reuse the stored one if it carries this
        // key, otherwise make (and store) a new one. The ID does not change either way.
        let cert_path = dir.join(CERT_FILE);
        let stored = fs::read_to_string(&cert_path)
            .ok()
            .and_then(|pem| parse_cert_pem(&pem))
            .filter(|der| spki_id(der) == Some(id));
        let identity = match stored {
            Some(cert) => Identity {
                id,
                name,
                key_pkcs8: key.serialize_der(),
                cert,
            },
            None => {
                let identity = Self::from_key(key, &name)?;
                write_file(&cert_path, identity.cert_pem().as_bytes(), 0o644)?;
                identity
            }
        };
        Ok(identity)
    }

    /// Loads the identity in `dir`, creating it (and the directory, mode 0700) if missing.
    /// `name` replaces the stored name when given.
    pub fn load_or_create(dir: &Path, name: Option<&str>) -> Result<(Self, bool), IdentityError> {
        if let Some(n) = name {
            validate_name(n)?;
        }
        let created = match Self::load(dir) {
            Ok(_) => false,
            Err(IdentityError::Missing(_)) => {
                fs::create_dir_all(dir).map_err(io_err(dir))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .map_err(|e| IdentityError::Cert(e.to_string()))?;
                let name = name.map(str::to_string).unwrap_or_else(default_name);
                write_file(&dir.join(NAME_FILE), format!("{name}\n").as_bytes(), 0o644)?;
                write_file(&dir.join(KEY_FILE), key.serialize_pem().as_bytes(), 0o600)?;
                let identity = Self::from_key(key, &name)?;
                write_file(&dir.join(CERT_FILE), identity.cert_pem().as_bytes(), 0o644)?;
                true
            }
            Err(e) => return Err(e),
        };
        if let Some(n) = name {
            write_file(&dir.join(NAME_FILE), format!("{n}\n").as_bytes(), 0o644)?;
        }
        Ok((Self::load(dir)?, created))
    }

    /// The certificate (DER).
    pub fn cert(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// The certificate (PEM).
    pub fn cert_pem(&self) -> String {
        let b64 = data_encoding::BASE64.encode(&self.cert);
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }

    /// The private key (PKCS#8 DER) for rustls.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    fn signing_key(&self) -> ring::signature::Ed25519KeyPair {
        // The key was validated as Ed25519 when loaded or generated.
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&self.key_pkcs8)
            .expect("the device key is a valid Ed25519 PKCS#8 key")
    }

    /// The raw 32-byte Ed25519 public key (its SPKI hashes to [`Identity::id`]).
    pub fn public_key(&self) -> [u8; 32] {
        use ring::signature::KeyPair;
        let mut out = [0u8; 32];
        out.copy_from_slice(self.signing_key().public_key().as_ref());
        out
    }

    /// Signs `msg` with the device key (Ed25519, 64 bytes).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.signing_key().sign(msg).as_ref().to_vec()
    }
}

/// The DER SubjectPublicKeyInfo of a raw Ed25519 public key.
pub fn ed25519_spki(public_key: &[u8; 32]) -> Vec<u8> {
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(public_key);
    spki
}

/// The device ID of a raw Ed25519 public key.
pub fn ed25519_id(public_key: &[u8; 32]) -> DeviceId {
    DeviceId::from_spki(&ed25519_spki(public_key))
}

/// Checks an Ed25519 signature made by [`Identity::sign`].
pub fn verify_signature(public_key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(msg, sig)
        .is_ok()
}

/// The device ID of a DER certificate's key, if the certificate parses.
pub fn spki_id(cert: &CertificateDer<'_>) -> Option<DeviceId> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(DeviceId::from_spki(ee.subject_public_key_info().as_ref()))
}

/// The device ID of the certificate a connection's peer presented.
pub fn peer_id(conn: &quinn::Connection) -> Option<DeviceId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    spki_id(certs.first()?)
}

fn parse_cert_pem(pem: &str) -> Option<CertificateDer<'static>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = data_encoding::BASE64.decode(body.as_bytes()).ok()?;
    Some(CertificateDer::from(der))
}

fn make_cert(key: &rcgen::KeyPair) -> Result<CertificateDer<'static>, IdentityError> {
    let mut params = rcgen::CertificateParams::new(vec!["cnspr".to_string()])
        .map_err(|e| IdentityError::Cert(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cnspr device");
    let cert = params
        .self_signed(key)
        .map_err(|e| IdentityError::Cert(e.to_string()))?;
    Ok(cert.der().clone())
}

/// Writes `data` atomically (temp file, fsync, rename) with `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_the_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (a, created) = Identity::load_or_create(&state, Some("desk")).unwrap();
        assert!(created);
        let (b, created) = Identity::load_or_create(&state, None).unwrap();
        assert!(!created);
        assert_eq!(a.id, b.id);
        assert_eq!(b.name, "desk");
        let mode = fs::metadata(state.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The ID is the hash of the certificate's SPKI as a verifier sees it.
        let cert = b.cert();
        let ee = webpki::EndEntityCert::try_from(&cert).unwrap();
        assert_eq!(
            DeviceId::from_spki(ee.subject_public_key_info().as_ref()),
            a.id
        );
    }

    #[test]
    fn refuses_a_key_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path(), Some("x")).unwrap();
        let key = dir.path().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::KeyPermissions { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn refuses_a_corrupt_key() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path(), Some("x")).unwrap();
        let key = dir.path().join(KEY_FILE);
        fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::KeyCorrupt { .. }), "{err}");
        fs::write(&key, b"\x00\x01garbage").unwrap();
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::KeyCorrupt { .. })
        ));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("laptop-2_x").is_ok());
        for bad in ["", "a b", "a/b", "a.b", "@x", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&default_name()).is_ok());
    }

    #[test]
    fn signatures_and_public_key_match_the_id() {
        let a = Identity::generate("a").unwrap();
        let b = Identity::generate("b").unwrap();
        assert_eq!(ed25519_id(&a.public_key()), a.id);
        let sig = a.sign(b"roster entry");
        assert!(verify_signature(&a.public_key(), b"roster entry", &sig));
        assert!(!verify_signature(&a.public_key(), b"roster entrY", &sig));
        assert!(!verify_signature(&b.public_key(), b"roster entry", &sig));
        assert!(!verify_signature(
            &a.public_key(),
            b"roster entry",
            &sig[..63]
        ));
    }
}
