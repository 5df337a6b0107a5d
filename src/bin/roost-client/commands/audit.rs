//! `audit`: follows the server's transparency log as an auditor. Each round reads the records
//! since the last, checks the newest head is signed by the server, extends the last one (a
//! consistency proof) and has the roots of the log as rebuilt here. Stops at the first failure,
//! which is evidence of a forked or forged log.

use roost::client::audit::Auditor;
use serde_json::json;

use super::Context;
use crate::output::Output;

pub async fn run(context: &Context<'_>, once: bool, interval_secs: u64) -> anyhow::Result<Output> {
    let (_device, _push) = context.authenticate().await?;
    let keys = context.connection.domain_keys().await?;
    let mut auditor = Auditor::new();
    loop {
        let audited = auditor.step(context.connection, &keys).await?;
        let output = Output::new(
            json!({
                "domain": audited.head.domain.as_str(),
                "tree_size": audited.head.tree_size,
                "new_records": audited.new_records,
                "log_root": hex::encode(audited.head.log_root),
                "map_root": hex::encode(audited.head.map_root),
            }),
            format!(
                "head of {} entries checked ({} new records replayed)",
                audited.head.tree_size, audited.new_records
            ),
        );
        if once {
            return Ok(output);
        }
        output.print(context.cli.json);
        tokio::time::sleep(std::time::Duration::from_secs(interval_secs)).await;
    }
}
