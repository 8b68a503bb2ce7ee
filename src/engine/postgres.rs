//! PostgreSQL over `tokio-postgres`, driven from the calculation's blocking thread by
//! a runtime of its own.
//!
//! A session is read-only, in UTC, named `tally` in `pg_stat_activity`, and bounded
//! by the Warehouse's `statementTimeout`. A cancel sends PostgreSQL's cancel request
//! on a connection of its own, which stops the running statement at once; the
//! session's connection then closes, so its backend leaves `pg_stat_activity`.
//! Errors name the Warehouse or table and the field to fix, never the password.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{CancelToken, Client, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::api::{PostgresSettings, SslMode};
use crate::job_contract::POSTGRES_CA_ENV as CA_ENV;
use crate::plan::{Dialect, EngineSettings, SourceCheck, SqlValue, check_statement};

use super::{Cancellation, EngineError, Interrupt, QueryResult};

/// libpq's variable for a CA file, read when `CA_ENV` is not set (`tally run`).
const CA_FILE_ENV: &str = "PGSSLROOTCERT";
const APPLICATION_NAME: &str = "tally";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open connection.
pub struct Session {
    runtime: tokio::runtime::Runtime,
    client: Client,
    tls: MakeRustlsConnect,
    warehouse: String,
    settings: PostgresSettings,
}

/// Where an error belongs: the Warehouse and one of its fields.
struct Blame<'a> {
    warehouse: &'a str,
}

impl Blame<'_> {
    fn error(&self, field: &str, message: impl Into<String>) -> EngineError {
        EngineError::Source {
            resource: self.warehouse.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The server could not be reached, or the connection broke: perhaps for a
    /// moment, so the Job may try again.
    fn unreachable(&self, message: impl Into<String>) -> EngineError {
        EngineError::Unreachable {
            resource: self.warehouse.to_string(),
            field: "spec.postgres.host".to_string(),
            message: message.into(),
        }
    }
}

/// The server's message of a database error (with its detail and hint), or the
/// error's own text.
fn message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; {hint}"));
            }
            text
        }
        None => {
            // The cause (connection refused, timed out, a TLS failure) says more
            // than "error connecting to server".
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(&format!(": {cause_text}"));
                }
                source = cause.source();
            }
            text
        }
    }
}

fn tls_config(
    settings: &PostgresSettings,
    blame: &Blame,
) -> Result<MakeRustlsConnect, EngineError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| blame.error("spec.postgres.sslMode", e.to_string()))?;
    let config = match settings.ssl_mode() {
        // libpq's `prefer` and `require` encrypt without checking who answers.
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
        SslMode::VerifyFull => builder
            .with_root_certificates(roots(blame)?)
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The CA of `verify-full`: the Job's `CA_ENV`, else the file `PGSSLROOTCERT` names,
/// else the system's roots.
fn roots(blame: &Blame) -> Result<rustls::RootCertStore, EngineError> {
    let field = "spec.postgres.caCertificate";
    let pem = match (std::env::var(CA_ENV), std::env::var(CA_FILE_ENV)) {
        (Ok(pem), _) => Some(pem.into_bytes()),
        (Err(_), Ok(path)) => Some(
            std::fs::read(&path)
                .map_err(|e| blame.error(field, format!("reading {CA_FILE_ENV} {path}: {e}")))?,
        ),
        _ => None,
    };
    let mut store = rustls::RootCertStore::empty();
    let certificates: Vec<CertificateDer<'static>> = match pem {
        Some(pem) => CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| blame.error(field, format!("not a PEM certificate: {e}")))?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    for certificate in certificates {
        store
            .add(certificate)
            .map_err(|e| blame.error(field, format!("unusable CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(blame.error(field, "no CA certificate to check the server against"));
    }
    Ok(store)
}

/// TLS that encrypts but, as libpq's `require`, does not check the server's
/// certificate (its signatures over the handshake are still checked).
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Sends PostgreSQL's cancel request for the session's running statement, from a
/// thread of its own (the caller may be on an async runtime or a signal handler's
/// task); one request at a time.
struct PostgresInterrupt {
    token: CancelToken,
    tls: MakeRustlsConnect,
    sending: Arc<AtomicBool>,
}

impl Interrupt for PostgresInterrupt {
    fn interrupt(&self) {
        if self.sending.swap(true, Ordering::SeqCst) {
            return;
        }
        let (token, tls, sending) = (self.token.clone(), self.tls.clone(), self.sending.clone());
        std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                && let Err(e) = runtime.block_on(token.cancel_query(tls))
            {
                tracing::warn!("sending PostgreSQL's cancel request: {}", message(&e));
            }
            sending.store(false, Ordering::SeqCst);
        });
    }
}

impl Session {
    /// Connects as the Warehouse says, with the password from the environment
    /// variable its settings name (`PGPASSWORD` by default).
    pub fn open(engine: &EngineSettings, cancellation: &Cancellation) -> Result<Self, EngineError> {
        cancellation.check()?;
        let warehouse = engine
            .warehouse
            .clone()
            .unwrap_or_else(|| "Warehouse".to_string());
        let blame = Blame {
            warehouse: &warehouse,
        };
        let settings = engine
            .postgres
            .clone()
            .ok_or_else(|| blame.error("spec.postgres", "required for engine postgres"))?;
        let password_env = settings
            .password_env
            .as_deref()
            .unwrap_or(PostgresSettings::DEFAULT_PASSWORD_ENV);
        let password = std::env::var(password_env).ok();
        if password.is_none() && settings.password_secret_ref.is_some() {
            return Err(blame.error(
                "spec.postgres.passwordSecretRef",
                format!("the password is not in the environment variable {password_env}"),
            ));
        }
        let mut config = tokio_postgres::Config::new();
        config
            .host(&settings.host)
            .port(settings.port())
            .dbname(&settings.database)
            .user(&settings.user)
            .application_name(APPLICATION_NAME)
            .connect_timeout(CONNECT_TIMEOUT)
            .ssl_mode(match settings.ssl_mode() {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
            });
        if let Some(password) = &password {
            config.password(password);
        }
        let tls = tls_config(&settings, &blame)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EngineError::Query(format!("starting the PostgreSQL client: {e}")))?;
        let (client, connection) = runtime
            .block_on(config.connect(tls.clone()))
            .map_err(|e| connect_error(&e, &settings, &blame))?;
        runtime.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("PostgreSQL connection ended: {}", message(&e));
            }
        });
        // Every join and grouping of a calculation is on the entity. The planner
        // cannot see through the CTEs' aggregates and guesses a few rows: it would
        // join them in nested loops, quadratic in the entities, and sort millions
        // of joined rows to group them. Hash joins and hash aggregation are linear
        // (measured with `tally bench --engine postgres`: 36 s to 24 s at 20M facts).
        let mut setup = String::from(
            "SET TimeZone = 'UTC';\nSET default_transaction_read_only = on;\nSET enable_nestloop = off;\nSET enable_sort = off;\n",
        );
        if let Some(timeout) = &settings.statement_timeout {
            setup.push_str(&format!(
                "SET statement_timeout = {};\n",
                timeout.as_signed().as_millis().max(1)
            ));
        }
        if let Some(schema) = &settings.schema {
            setup.push_str(&format!(
                "SET search_path = {};\n",
                crate::plan::dialect::Postgres.quote_ident(schema)
            ));
        }
        runtime
            .block_on(client.batch_execute(&setup))
            .map_err(|e| blame.error("spec.postgres", message(&e)))?;
        Ok(Self {
            runtime,
            client,
            tls,
            warehouse,
            settings,
        })
    }

    fn blame(&self) -> Blame<'_> {
        Blame {
            warehouse: &self.warehouse,
        }
    }

    /// Checks that a source can be read and has the columns the calculation reads,
    /// in one statement that returns no row.
    pub fn check_source(
        &self,
        check: &SourceCheck,
        cancellation: &Cancellation,
    ) -> Result<(), EngineError> {
        let error = |field: &str, message: String| EngineError::Source {
            resource: check.resource.clone(),
            field: field.to_string(),
            message,
        };
        let columns = match self.run(&check.sql, cancellation) {
            Ok(result) => result.columns,
            Err(Failure::Database(e)) => {
                let detail = message(&e);
                let what = match e.code() {
                    Some(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => format!(
                        "{detail}: grant the user {:?} SELECT on {}",
                        self.settings.user, check.shown
                    ),
                    _ => detail,
                };
                return Err(error(&check.field, what));
            }
            Err(Failure::Engine(other)) => return Err(other),
        };
        // A quoted identifier is case-sensitive in PostgreSQL, and Tally quotes.
        super::check_columns(check, &columns, |a, b| a == b)
    }

    /// Runs `sql`, which must be one statement, and collects every row.
    pub fn query(
        &self,
        sql: &str,
        cancellation: &Cancellation,
    ) -> Result<QueryResult, EngineError> {
        self.run(sql, cancellation)
            .map_err(|failure| match failure {
                Failure::Engine(e) => e,
                Failure::Database(e) => EngineError::Query(message(&e)),
            })
    }

    fn run(&self, sql: &str, cancellation: &Cancellation) -> Result<QueryResult, Failure> {
        check_statement(sql).map_err(|e| Failure::Engine(EngineError::Refused(e)))?;
        cancellation
            .start(Box::new(PostgresInterrupt {
                token: self.client.cancel_token(),
                tls: self.tls.clone(),
                sending: Arc::default(),
            }))
            .map_err(Failure::Engine)?;
        let outcome = self.runtime.block_on(async {
            let statement = self.client.prepare(sql).await?;
            let rows = self.client.query(&statement, &[]).await?;
            Ok::<_, tokio_postgres::Error>((statement, rows))
        });
        let (statement, rows) = match outcome {
            Ok(done) => done,
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => {
                return Err(Failure::Engine(if cancellation.is_requested() {
                    EngineError::Cancelled
                } else {
                    self.blame().error(
                        "spec.postgres.statementTimeout",
                        format!(
                            "the query ran longer than {} and the server stopped it",
                            self.settings
                                .statement_timeout
                                .as_ref()
                                .map(|t| t.to_string())
                                .unwrap_or_else(|| "the server's statement_timeout".into())
                        ),
                    )
                }));
            }
            Err(e) if cancellation.is_requested() => {
                tracing::debug!("after a cancel: {}", message(&e));
                return Err(Failure::Engine(EngineError::Cancelled));
            }
            Err(e) if e.as_db_error().is_none() => {
                return Err(Failure::Engine(
                    self.blame()
                        .unreachable(format!("the connection failed: {}", message(&e))),
                ));
            }
            Err(e) => return Err(Failure::Database(e)),
        };
        let columns: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let rows = rows
            .iter()
            .map(|row| {
                (0..columns.len())
                    .map(|i| value(row, i, &columns[i]))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(Failure::Engine)?;
        Ok(QueryResult { columns, rows })
    }
}

enum Failure {
    Engine(EngineError),
    /// An error the server reported about the statement.
    Database(tokio_postgres::Error),
}

/// A connection error as the field of the Warehouse to fix.
fn connect_error(
    error: &tokio_postgres::Error,
    settings: &PostgresSettings,
    blame: &Blame,
) -> EngineError {
    let text = message(error);
    match error.code() {
        Some(code)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            blame.error(
                "spec.postgres.passwordSecretRef",
                format!(
                    "the server refused user {:?}: {text}; check the password and the user",
                    settings.user
                ),
            )
        }
        Some(code) if *code == SqlState::INVALID_CATALOG_NAME => blame.error(
            "spec.postgres.database",
            format!("{text}; check the database name"),
        ),
        Some(_) => blame.error("spec.postgres", text),
        None if text.contains("TLS") || text.contains("tls") || text.contains("certificate") => {
            blame.error("spec.postgres.sslMode", text)
        }
        None => blame.unreachable(format!(
            "could not connect to {}:{}: {text}",
            settings.host,
            settings.port()
        )),
    }
}

fn value(row: &Row, i: usize, column: &str) -> Result<SqlValue, EngineError> {
    let unreadable = |e: Box<dyn std::error::Error + Sync + Send>| EngineError::Value {
        column: column.to_string(),
        message: e.to_string(),
    };
    let ty = row.columns()[i].type_().clone();
    let get = |e: tokio_postgres::Error| EngineError::Value {
        column: column.to_string(),
        message: message(&e),
    };
    let int = |v: Option<i64>| v.map_or(SqlValue::Null, SqlValue::Int);
    let float = |v: Option<f64>| v.map_or(SqlValue::Null, SqlValue::Float);
    Ok(match ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(get)?
            .map_or(SqlValue::Null, |b| SqlValue::Int(i64::from(b))),
        Type::INT2 => int(row
            .try_get::<_, Option<i16>>(i)
            .map_err(get)?
            .map(i64::from)),
        Type::INT4 => int(row
            .try_get::<_, Option<i32>>(i)
            .map_err(get)?
            .map(i64::from)),
        Type::INT8 => int(row.try_get::<_, Option<i64>>(i).map_err(get)?),
        Type::FLOAT4 => float(
            row.try_get::<_, Option<f32>>(i)
                .map_err(get)?
                .map(f64::from),
        ),
        Type::FLOAT8 => float(row.try_get::<_, Option<f64>>(i).map_err(get)?),
        Type::NUMERIC => match row.try_get::<_, Option<Numeric>>(i).map_err(get)? {
            None => SqlValue::Null,
            Some(Numeric(v)) => v,
        },
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
            .try_get::<_, Option<String>>(i)
            .map_err(get)?
            .map_or(SqlValue::Null, SqlValue::Text),
        other => {
            return Err(unreadable(
                format!("unsupported type {}", other.name()).into(),
            ));
        }
    })
}

/// A `numeric` (PostgreSQL's sum of integers): an integer when it is one and fits,
/// else the nearest float.
struct Numeric(SqlValue);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        decode_numeric(raw)
            .map(Numeric)
            .ok_or_else(|| "malformed numeric".into())
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// The binary `numeric`: digit count, weight (of the first base-10000 digit), sign,
/// display scale, then the digits.
fn decode_numeric(raw: &[u8]) -> Option<SqlValue> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*raw.get(2 * i)?, *raw.get(2 * i + 1)?]))
    };
    let digits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let scale = word(3)?;
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Some(SqlValue::Float(f64::NAN)),
        0xD000 => return Some(SqlValue::Float(f64::INFINITY)),
        0xF000 => return Some(SqlValue::Float(f64::NEG_INFINITY)),
        _ => return None,
    };
    let values: Vec<u16> = (0..digits).map(|i| word(4 + i)).collect::<Option<_>>()?;
    if scale == 0 && weight >= 0 && weight >= values.len() as i64 - 1 {
        let mut integer: Option<i128> = Some(0);
        for position in 0..=weight {
            let digit = values.get(position as usize).copied().unwrap_or(0);
            integer = integer
                .and_then(|v| v.checked_mul(10_000))
                .and_then(|v| v.checked_add(i128::from(digit)));
        }
        if let Some(v) = integer.and_then(|v| i64::try_from(if negative { -v } else { v }).ok()) {
            return Some(SqlValue::Int(v));
        }
    }
    // 0.dddd dddd … × 10^(4(weight + 1)), parsed with correct rounding.
    let mantissa: String = values.iter().map(|d| format!("{d:04}")).collect();
    let text = format!(
        "{}0.{}e{}",
        if negative { "-" } else { "" },
        if mantissa.is_empty() { "0" } else { &mantissa },
        4 * (weight + 1)
    );
    text.parse().ok().map(SqlValue::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(digits: &[u16], weight: i16, negative: bool, scale: u16) -> Vec<u8> {
        let mut raw = Vec::new();
        for word in [
            digits.len() as u16,
            weight as u16,
            if negative { 0x4000 } else { 0 },
            scale,
        ]
        .into_iter()
        .chain(digits.iter().copied())
        {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numerics_decode_to_integers_when_they_are_and_floats_otherwise() {
        assert_eq!(
            decode_numeric(&numeric(&[], 0, false, 0)),
            Some(SqlValue::Int(0))
        );
        // 12 3456 7890 and 1 0000 0000 (trailing zero digits are not stored).
        assert_eq!(
            decode_numeric(&numeric(&[12, 3456, 7890], 2, false, 0)),
            Some(SqlValue::Int(1_234_567_890))
        );
        assert_eq!(
            decode_numeric(&numeric(&[1], 2, true, 0)),
            Some(SqlValue::Int(-100_000_000))
        );
        // 3.25 and 0.0005
        assert_eq!(
            decode_numeric(&numeric(&[3, 2500], 0, false, 2)),
            Some(SqlValue::Float(3.25))
        );
        assert_eq!(
            decode_numeric(&numeric(&[5], -1, false, 4)),
            Some(SqlValue::Float(0.0005))
        );
        assert_eq!(decode_numeric(&[0, 1]), None);
    }
}
