//! `dockexpose fleet exposures`: what the fleet exposes, from the store. One row per
//! host, protocol, port and container of the `reached` records (see `query`), each
//! record counted once however often it was delivered. Exit 1 when there is any
//! row, 0 when none, 2 on error.

pub mod query;
pub mod render;
pub mod rows;

use std::{path::PathBuf, time::Duration};

use super::{
    clickhouse::{ClickHouse, StoreError},
    target::{self, Credentials, StoreTarget, ENV_PASSWORD, ENV_USER},
};

/// What `fleet exposures` was asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub store: String,
    pub since: Option<Duration>,
    pub host: Option<String>,
    pub json: bool,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

/// The store's refusal, with the fix where the exception code tells it.
fn explain(target: &str, e: StoreError) -> String {
    let code = |text: &str| -> Option<u32> {
        let rest = &text[text.find("Code: ")? + 6..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    match e {
        StoreError::Retry(why) => format!(
            "the store {target} did not answer: {why}; Fix: check that ClickHouse runs there and that the URL \
             names its HTTP port (8123 by default)"
        ),
        StoreError::Refused(why) => match code(&why) {
            Some(60 | 81) => format!(
                "the store {target} has no such table: {why}; Fix: create it with the statements of \
                 `dockexpose fleet schema --table DATABASE.TABLE` (with --shards CLUSTER, on every shard)"
            ),
            Some(192..=195 | 516) => format!(
                "the store {target} refused the credentials: {why}; Fix: set {ENV_USER} and {ENV_PASSWORD} \
                 to a user that may read the table"
            ),
            Some(497) => format!("the store {target}: {why}; Fix: grant the user SELECT on the table"),
            _ => format!("the store {target} refused the query: {why}"),
        },
    }
}

/// Runs the query and prints the rows. Ok(1) when any exposure was found, Ok(0)
/// when none; Err: what failed, for "error: ..." and exit 2.
pub async fn run(req: Request) -> Result<i32, String> {
    let target = match target::parse(&req.store)? {
        StoreTarget::ClickHouse(t) => t,
        StoreTarget::Nats(_) => {
            return Err(format!(
                "--store {}: NATS carries records but cannot answer queries; Fix: give the ClickHouse table \
                 the bridge fills (clickhouse+http://HOST:PORT/DATABASE.TABLE)",
                req.store
            ))
        }
    };
    let since_secs = match req.since {
        Some(d) if d.as_secs() == 0 => return Err("--since: give at least 1s, such as 24h or 7d".into()),
        Some(d) => Some(d.as_secs()),
        None => None,
    };
    let filter = query::Filter { since_secs, host: req.host.clone() };
    let credentials = Credentials::from_env();
    let mut store = ClickHouse::new(&target, credentials.as_ref(), req.ca_file.as_deref(), req.timeout)?;
    let body = store.query(&query::sql(&target, &filter)).await.map_err(|e| explain(&target.to_string(), e))?;
    let rows = rows::parse(&body)?;
    let text = if req.json { render::json_lines(&rows) } else { render::table(&rows) };
    crate::say_out!("{}", text.trim_end());
    Ok(i32::from(!rows.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_fix() {
        let t = "clickhouse+http://127.0.0.1:8123/d.t";
        let e = explain(t, StoreError::Refused("ClickHouse answered 404: Code: 60, Table d.t doesn't exist.".into()));
        assert!(e.contains("no such table") && e.contains("dockexpose fleet schema"), "{e}");
        let e = explain(t, StoreError::Refused("ClickHouse answered 404: Code: 81, Database d doesn't exist".into()));
        assert!(e.contains("fleet schema"), "{e}");
        let e = explain(t, StoreError::Refused("Code: 193, Wrong password".into()));
        assert!(e.contains(ENV_USER), "{e}");
        let e = explain(t, StoreError::Retry("connect: Connection refused".into()));
        assert!(e.contains("did not answer") && e.contains("8123"), "{e}");
    }
}
