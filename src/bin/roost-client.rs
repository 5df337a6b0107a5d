//! `roost-client`: a command-line client for people and scripts. `--json` makes every command
//! print one JSON object (or, on failure, `{"error": ...}`) on standard output.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use roost::client::{ClientConfig, ClientError, Connection};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "roost-client",
    version,
    about = "Command-line client for a Roost homeserver"
)]
struct Cli {
    /// The homeserver's address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: String,
    /// The name the server's certificate must carry (its domain).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// PEM file with the CA or server certificate to trust (the default is where `roost serve`
    /// writes its self-signed certificate).
    #[arg(long, default_value = "roost-data/server-cert.pem")]
    ca: PathBuf,
    /// Directory where this client keeps its identity and keys.
    #[arg(long, default_value = "roost-client-state")]
    state: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the server's domain, protocol version and limits.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(json, &anyhow::Error::from(e)),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(json, &e),
    }
}

fn fail(json: bool, error: &anyhow::Error) -> ExitCode {
    if json {
        let code = error
            .downcast_ref::<ClientError>()
            .and_then(ClientError::code)
            .map(|code| code.to_u16());
        println!("{}", json!({ "error": format!("{error:#}"), "code": code }));
    }
    eprintln!("roost-client: {error:#}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server_addr = tokio::net::lookup_host(&cli.server)
        .await
        .with_context(|| format!("resolving {}", cli.server))?
        .next()
        .with_context(|| format!("{} has no address", cli.server))?;
    let config = ClientConfig::new(server_addr, &cli.server_name, &cli.ca)
        .with_context(|| format!("loading trusted certificate {}", cli.ca.display()))?;
    let connection = Connection::connect(&config).await?;
    match cli.command {
        Command::Info => {
            let info = connection.server_info().await?;
            let limits = info.limits;
            if cli.json {
                println!(
                    "{}",
                    json!({
                        "server": server_addr.to_string(),
                        "domain": info.domain.as_str(),
                        "protocol_version": info.protocol_version,
                        "limits": {
                            "max_request_len": limits.max_request_len,
                            "max_response_len": limits.max_response_len,
                            "max_notification_len": limits.max_notification_len,
                            "max_concurrent_streams": limits.max_concurrent_streams,
                            "idle_timeout_ms": limits.idle_timeout_ms,
                            "request_timeout_ms": limits.request_timeout_ms,
                        },
                    })
                );
            } else {
                println!("server:                 {server_addr}");
                println!("domain:                 {}", info.domain);
                println!("protocol version:       {}", info.protocol_version);
                println!("max request:            {} bytes", limits.max_request_len);
                println!("max response:           {} bytes", limits.max_response_len);
                println!(
                    "max notification:       {} bytes",
                    limits.max_notification_len
                );
                println!("max concurrent streams: {}", limits.max_concurrent_streams);
                println!("idle timeout:           {} ms", limits.idle_timeout_ms);
                println!("request timeout:        {} ms", limits.request_timeout_ms);
            }
        }
    }
    connection.close().await;
    Ok(())
}
