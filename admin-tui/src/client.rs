//! The connection to idsvc's admin port: URL, credential and transport.
//!
//! The credential is a bearer token (`authorization: Bearer <token>`),
//! checked by idsvc against its admin credentials file. `https://` URLs are
//! reached over mutual TLS (see [`crate::tls`]); plain-text `http://` only on
//! loopback, since the token would otherwise cross the network in clear.

use crate::failure::{Failure, chain};
use crate::tls::{TlsConnector, TlsFiles};
use http::Uri;
use idbase_proto::v1::admin_client::AdminClient;
use idbase_proto::v1::phases_client::PhasesClient;
use std::path::PathBuf;
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// idsvc's admin port when `idbase dev` runs with its defaults.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:50052";

/// `idbase admin` flags for reaching idsvc's admin port.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectionArgs {
    /// idsvc's admin gRPC URL: `https://` (with `--admin-ca`, `--admin-cert`,
    /// `--admin-key`) or `http://` on loopback.
    #[arg(long, global = true, env = "IDBASE_ADMIN_URL", default_value = DEFAULT_ADMIN_URL)]
    pub admin_url: String,
    /// File holding the admin token (one line). Without it the token is
    /// read from the environment variable `IDBASE_ADMIN_TOKEN`.
    #[arg(
        long,
        global = true,
        env = "IDBASE_ADMIN_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// PEM CA bundle that signs idsvc's certificate (https URLs).
    #[arg(long, global = true, env = "IDBASE_ADMIN_CA", value_name = "FILE",
          requires_all = ["admin_cert", "admin_key"])]
    pub admin_ca: Option<PathBuf>,
    /// This tool's PEM client certificate chain for idsvc (https URLs).
    #[arg(
        long,
        global = true,
        env = "IDBASE_ADMIN_CERT",
        value_name = "FILE",
        requires = "admin_ca"
    )]
    pub admin_cert: Option<PathBuf>,
    /// PEM private key of `--admin-cert`.
    #[arg(
        long,
        global = true,
        env = "IDBASE_ADMIN_KEY",
        value_name = "FILE",
        requires = "admin_ca"
    )]
    pub admin_key: Option<PathBuf>,
    /// Seconds to wait for the connection (TCP and TLS) before giving up
    /// with exit code 6.
    #[arg(
        long,
        global = true,
        env = "IDBASE_ADMIN_CONNECT_TIMEOUT",
        default_value_t = 5,
        value_name = "SECONDS"
    )]
    pub connect_timeout: u64,
    /// Seconds to wait for each answer (the stream of `--wait` has its own limit).
    #[arg(
        long,
        global = true,
        env = "IDBASE_ADMIN_TIMEOUT",
        default_value_t = 30,
        value_name = "SECONDS"
    )]
    pub timeout: u64,
}

impl ConnectionArgs {
    fn tls_files(&self) -> Option<TlsFiles> {
        match (&self.admin_ca, &self.admin_cert, &self.admin_key) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// The admin client: a channel with the bearer token on every call, and
/// the per-call time limit.
#[derive(Clone)]
pub struct Client {
    pub phases: PhasesClient<InterceptedService<Channel, Bearer>>,
    pub admin: AdminClient<InterceptedService<Channel, Bearer>>,
    pub timeout: Duration,
}

impl Client {
    /// A unary request with the per-call time limit (sent as `grpc-timeout`
    /// too, so idsvc stops working on an answer nobody waits for).
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token:
/// idsvc then answers UNAUTHENTICATED, which names the missing credential).
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The token from `--admin-token-file`, else from the environment.
fn token(args: &ConnectionArgs, env_token: Option<String>) -> Result<Option<String>, Failure> {
    let token = match &args.admin_token_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            Failure::usage(format!(
                "reading the admin token file {}: {e}",
                path.display()
            ))
        })?,
        None => match env_token {
            Some(token) => token,
            None => return Ok(None),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(Failure::usage("the admin token is empty"));
    }
    Ok(Some(token.to_owned()))
}

fn bearer(token: Option<String>) -> Result<Bearer, Failure> {
    let Some(token) = token else {
        return Ok(Bearer(None));
    };
    let mut value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| Failure::usage("the admin token holds characters a header cannot carry"))?;
    // Kept out of debug output and HPACK's dynamic table.
    value.set_sensitive(true);
    Ok(Bearer(Some(value)))
}

/// True for `localhost` and loopback addresses.
fn is_loopback(uri: &Uri) -> bool {
    uri.host().is_some_and(|host| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// Connects at once, so an unreachable idsvc is one clear line (exit 6)
/// rather than an error from the first call.
pub async fn connect(args: &ConnectionArgs, env_token: Option<String>) -> Result<Client, Failure> {
    let url = args.admin_url.trim_end_matches('/');
    let bearer = bearer(token(args, env_token)?)?;
    let connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Failure::usage(format!("--admin-url {url}: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    let connected = match endpoint.uri().scheme_str() {
        Some("https") => {
            let files = args.tls_files().ok_or_else(|| {
                Failure::usage(format!(
                    "{url}: https needs --admin-ca, --admin-cert and --admin-key"
                ))
            })?;
            let connector = TlsConnector::load(&files, connect_timeout)
                .map_err(|e| Failure::usage(format!("{e:#}")))?;
            endpoint.connect_with_connector(connector).await
        }
        Some("http") if is_loopback(endpoint.uri()) => endpoint.connect().await,
        Some("http") => {
            return Err(Failure::usage(format!(
                "{url}: plain-text http is allowed to loopback only (the admin token would cross \
                 the network in clear); use https:// with --admin-ca, --admin-cert and --admin-key"
            )));
        }
        _ => {
            return Err(Failure::usage(format!(
                "{url}: the admin URL is https:// (or http:// on loopback)"
            )));
        }
    };
    let channel = connected.map_err(|e| {
        Failure::unreachable(format!(
            "cannot reach idsvc's admin port at {url}: {}",
            chain(&e)
        ))
    })?;
    Ok(Client {
        phases: PhasesClient::with_interceptor(channel.clone(), bearer.clone()),
        admin: AdminClient::with_interceptor(channel, bearer),
        timeout: Duration::from_secs(args.timeout.max(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for url in [
            "http://127.0.0.1:50052",
            "http://localhost:1",
            "http://[::1]:50052",
        ] {
            assert!(is_loopback(&url.parse().unwrap()), "{url}");
        }
        for url in [
            "http://idsvc:50052",
            "http://10.0.0.1:50052",
            "http://[fd00::1]:1",
        ] {
            assert!(!is_loopback(&url.parse().unwrap()), "{url}");
        }
    }

    #[test]
    fn the_bearer_value_is_sensitive() {
        let Bearer(Some(value)) = bearer(Some("s3cret".into())).unwrap() else {
            panic!("no header");
        };
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret");
        assert!(bearer(Some("line\nbreak".into())).is_err());
    }
}
