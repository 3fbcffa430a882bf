//! Connecting to PostgreSQL: the URL as libpq users write it, TLS by
//! `sslmode` with rustls, and what the driver's errors mean to an operator.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;

use crate::backend::probe::{self, Proto};
use crate::backend::Url;
use crate::error::{fail, INTERNAL, UNAVAILABLE, USAGE};

/// Where and how to connect, from the URL.
#[derive(Debug)]
pub(super) struct Target {
    pub config: tokio_postgres::Config,
    /// None: a plain connection (sslmode=disable, or a unix socket).
    pub tls: Option<rustls::ClientConfig>,
    pub database: String,
    /// The schema of the lease table (dlock's own `schema` parameter).
    pub schema: String,
}

/// How much of the server's certificate `sslmode` checks, as libpq does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// prefer, require: encryption only.
    Nothing,
    /// verify-ca (and require with an sslrootcert): signed by a trusted CA.
    Ca,
    /// verify-full: that, and issued for the host dialled.
    Full,
}

/// The driver's settings from a libpq URL, with dlock's parameters
/// (`schema`) and the ones the driver lacks (`sslrootcert`, the verify
/// modes of `sslmode`) taken out.
pub(super) fn options(url: &Url, timeout: Duration) -> Result<Target> {
    let usage = |why: String| {
        fail(
            USAGE,
            format!(
                "invalid PostgreSQL URL '{}': {why}; expected {}",
                url.shown(),
                super::FORM
            ),
        )
    };
    // The driver reads libpq's URL syntax: give it the URL checked already,
    // without dlock's own parameters.
    let raw = url.as_str();
    let (base, query) = raw.split_once('?').unwrap_or((raw, ""));
    let (mut sslmode, mut rootcert, mut schema) = ("prefer".to_string(), None, None);
    let mut kept = Vec::new();
    for raw in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = ::url::form_urlencoded::parse(raw.as_bytes())
            .next()
            .unwrap_or_default();
        match k.as_ref() {
            "sslmode" => sslmode = v.into_owned(),
            "sslrootcert" => rootcert = Some(v.into_owned()),
            "schema" => schema = Some(v.into_owned()),
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(usage(format!("{k} (client certificates) is not supported")))
            }
            _ => kept.push(raw),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| usage(e.to_string()))?;
    let schema = schema.unwrap_or_else(|| "public".into());
    if schema.is_empty() || schema.len() > 63 || schema.contains('\0') {
        return Err(usage("schema must be 1 to 63 bytes".into()));
    }
    let database = match config.get_dbname() {
        Some(d) if !d.is_empty() => d.to_string(),
        // As libpq: the database named after the user.
        _ => match config.get_user() {
            Some(u) => u.to_string(),
            None => return Err(usage("no database named".into())),
        },
    };
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        // libpq's default: the local server's socket.
        config.host("/run/postgresql");
    }
    let socket = config
        .get_hosts()
        .iter()
        .all(|h| matches!(h, Host::Unix(_)));
    let check = match sslmode.as_str() {
        "disable" | "allow" => None,
        "prefer" => Some(Check::Nothing),
        "require" if rootcert.is_some() => Some(Check::Ca),
        "require" => Some(Check::Nothing),
        "verify-ca" => Some(Check::Ca),
        "verify-full" => Some(Check::Full),
        other => {
            return Err(usage(format!(
                "sslmode must be disable, prefer, require, verify-ca or verify-full, not '{other}'"
            )))
        }
    };
    config
        .connect_timeout(timeout)
        .ssl_mode(match sslmode.as_str() {
            "disable" | "allow" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            _ => SslMode::Require,
        })
        .keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("dlock");
    }
    // As libpq: no TLS over a unix socket, whatever sslmode says.
    let tls = match check {
        Some(check) if !socket => Some(tls_config(check, rootcert.as_deref(), &usage)?),
        _ => {
            config.ssl_mode(SslMode::Disable);
            None
        }
    };
    Ok(Target {
        config,
        tls,
        database,
        schema,
    })
}

fn tls_config(
    check: Check,
    rootcert: Option<&str>,
    usage: &dyn Fn(String) -> anyhow::Error,
) -> Result<rustls::ClientConfig> {
    // rustls needs a process-wide crypto provider; ring builds with no system libraries.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(INTERNAL, format!("TLS set-up failed: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(AnyCert(provider)),
        Check::Ca | Check::Full => {
            let roots = Arc::new(roots(rootcert, usage)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| usage(format!("sslrootcert: {e}")))?;
            if check == Check::Full {
                webpki
            } else {
                Arc::new(AnyName(webpki))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The CAs to trust: `sslrootcert=FILE` (PEM), `sslrootcert=system`, or
/// by default libpq's `~/.postgresql/root.crt`, else the system's.
fn roots(rootcert: Option<&str>, usage: &dyn Fn(String) -> anyhow::Error) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    let home_file = std::env::var_os("HOME")
        .map(|h| std::path::Path::new(&h).join(".postgresql/root.crt"))
        .filter(|p| p.exists());
    let file = match rootcert {
        Some("system") => None,
        Some(f) => Some(std::path::PathBuf::from(f)),
        None => home_file,
    };
    match file {
        Some(f) => {
            let certs = CertificateDer::pem_file_iter(&f)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| usage(format!("cannot read sslrootcert {}: {e}", f.display())))?;
            store.add_parsable_certificates(certs);
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
    }
    if store.is_empty() {
        return Err(usage(
            "no trusted CA certificates found; give sslrootcert=/path/ca.pem".into(),
        ));
    }
    Ok(store)
}

/// sslmode=prefer/require: the connection is encrypted, the certificate
/// not checked (libpq's meaning); the handshake's signatures still are.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// sslmode=verify-ca: the chain must lead to a trusted CA; the name in the
/// certificate may differ from the host dialled.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        cert: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(cert, chain, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The server refuses new connections until others close.
pub(super) fn is_full(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::TOO_MANY_CONNECTIONS)
}

/// Errors after which the connection can no longer be trusted.
pub(super) fn breaks_connection(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => matches!(
            db.code().code(),
            "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006" | "08P01"
        ),
        None => true,
    }
}

/// One clear line for a driver error; the password never appears in them.
pub(super) fn describe(
    e: &tokio_postgres::Error,
    at: &str,
    database: &str,
    timeout: Duration,
) -> anyhow::Error {
    if let Some(db) = e.as_db_error() {
        let msg = format!("{} ({})", db.message(), db.code().code());
        let code = db.code().code();
        return match code {
            "28P01" | "28000" => fail(
                UNAVAILABLE,
                format!("authentication to {at} failed: check the user and password in the URL ({})", db.message()),
            ),
            "3D000" => fail(
                UNAVAILABLE,
                format!("unknown database '{database}' on {at}: create it first (CREATE DATABASE \"{database}\")"),
            ),
            "42501" => fail(
                UNAVAILABLE,
                format!("{at} refused the request: {msg}; see the README for the privileges dlock needs"),
            ),
            "53300" | "53400" => fail(UNAVAILABLE, format!("{at} refused the connection: {msg}")),
            "57P01" | "57P02" | "57P03" => fail(UNAVAILABLE, format!("lost connection to {at}: {msg}")),
            _ if code.starts_with("08") => fail(UNAVAILABLE, format!("lost connection to {at}: {msg}")),
            // Serialization, deadlock, lock and statement timeouts, read-only standby.
            "40001" | "40P01" | "55P03" | "57014" | "25006" => {
                fail(UNAVAILABLE, format!("{at} did not complete the request: {msg}"))
            }
            _ => fail(INTERNAL, format!("unexpected error from {at}: {msg}")),
        };
    }
    let text = e.to_string();
    let io = io_error(e);
    if let Some(io) = io {
        use std::io::ErrorKind;
        if let Some(tls) = io.get_ref().filter(|i| i.is::<rustls::Error>()) {
            return fail(
                UNAVAILABLE,
                format!("TLS with {at} failed: {tls}; check sslmode, sslrootcert and the server's certificate"),
            );
        }
        return match io.kind() {
            ErrorKind::ConnectionRefused => fail(
                UNAVAILABLE,
                format!("cannot connect to {at}: connection refused; is the PostgreSQL server running and listening there?"),
            ),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => silent(at, timeout),
            ErrorKind::NotFound => fail(
                UNAVAILABLE,
                format!("cannot connect to {at}: no server socket there; is the PostgreSQL server running?"),
            ),
            // Connecting failed: a name that does not resolve, a host unreachable.
            _ if text.starts_with("error connecting") => {
                fail(UNAVAILABLE, format!("cannot connect to {at}: {io}"))
            }
            _ => fail(UNAVAILABLE, format!("lost connection to {at}: {io}")),
        };
    }
    if text.contains("timed out") || text.contains("timeout") {
        return silent(at, timeout);
    }
    if text.contains("TLS") || text.contains("tls") || text.contains("certificate") {
        let why = std::error::Error::source(e).map_or(text.clone(), |s| s.to_string());
        return fail(
            UNAVAILABLE,
            format!("TLS with {at} failed: {why}; check sslmode, sslrootcert and the server's certificate"),
        );
    }
    if e.is_closed() || text.contains("closed") {
        return fail(UNAVAILABLE, format!("lost connection to {at}: {text}"));
    }
    if text.contains("authentication") || text.contains("password") {
        return fail(
            UNAVAILABLE,
            format!("authentication to {at} failed: {text}"),
        );
    }
    fail(UNAVAILABLE, format!("lost connection to {at}: {text}"))
}

pub(super) fn silent(at: &str, timeout: Duration) -> anyhow::Error {
    fail(UNAVAILABLE, crate::error::silent(at, timeout, true, ""))
}

/// The I/O error under a driver error, where there is one.
fn io_error(e: &tokio_postgres::Error) -> Option<&std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// What listens at the first TCP host of `config` instead of PostgreSQL,
/// as the line to print, when a connection failed in a way another
/// protocol explains (`e`), or is slow (None). A server's own refusal, and a
/// TCP connection that failed, are PostgreSQL's to explain.
pub(super) fn elsewhere(
    config: &tokio_postgres::Config,
    shown: &str,
    e: Option<&tokio_postgres::Error>,
    within: Duration,
) -> Option<anyhow::Error> {
    if let Some(e) = e {
        if e.as_db_error().is_some() || e.to_string().starts_with("error connecting") {
            return None;
        }
    }
    let i = config
        .get_hosts()
        .iter()
        .position(|h| matches!(h, tokio_postgres::config::Host::Tcp(_)))?;
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[i] else {
        return None;
    };
    let port = config
        .get_ports()
        .get(i)
        .or(config.get_ports().first())
        .copied()
        .unwrap_or(5432);
    let other = probe::speaks(host, port, within).filter(|p| *p != Proto::Postgres)?;
    // PostgreSQL's TLS begins inside its own protocol, never on a bare TLS port.
    let msg = probe::wrong_port((host, port), shown, "PostgreSQL", other, None);
    Some(crate::error::fail_unsent(UNAVAILABLE, msg))
}
