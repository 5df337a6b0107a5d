//! The README's shell sections, run exactly as written: each `sh` block (unless marked
//! `<!-- readme-test: skip ... -->`) runs in its own empty directory under bash, with
//! `cargo run ... --bin NAME -- ARGS` standing for the binaries this test was built with. A
//! line ending in `&` runs in the background as written; the test only waits, before the next
//! line, until a server it started is serving or a `push-listen` is listening (what a person
//! would see before typing on). Every other command must succeed.

use std::path::Path;
use std::process::Command;

/// What the script runs before the block: `cargo run` mapped onto the built binaries, and the
/// wait for a background command to be ready.
const PRELUDE: &str = r#"
set -euo pipefail
shopt -s expand_aliases
# A block that fails half-way leaves no server behind to hold its port for the next run.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
cargo() {
    if [ "$1" != run ]; then echo "README test: only 'cargo run' is supported: cargo $*" >&2; return 1; fi
    shift
    local bin=
    while [ $# -gt 0 ]; do
        case "$1" in
            -q|--quiet|--release) shift ;;
            --bin) bin=$2; shift 2 ;;
            --) shift; break ;;
            *) echo "README test: unexpected cargo argument $1" >&2; return 1 ;;
        esac
    done
    # In a background job or a command substitution, become the binary, so that signals
    # (kill %1) reach it.
    if [ "$BASHPID" != "$$" ]; then exec "$ROOST_BIN_DIR/$bin" "$@"; fi
    "$ROOST_BIN_DIR/$bin" "$@"
}
readme_test_ready() {
    local log=$1 marker=$2
    for _ in $(seq 400); do
        if grep -q "$marker" "$log" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "README test: no '$marker' in $log:" >&2
    cat "$log" >&2
    return 1
}
"#;

/// The runnable blocks of `markdown`: (line number, block text).
fn runnable_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let lines: Vec<&str> = markdown.lines().collect();
    let mut index = 0;
    while index < lines.len() {
        if lines[index].trim() == "```sh" {
            let skipped = index > 0 && lines[index - 1].starts_with("<!-- readme-test: skip");
            let start = index + 1;
            let end = (start..lines.len())
                .find(|&i| lines[i].trim() == "```")
                .expect("an unterminated code block");
            if !skipped {
                blocks.push((start, lines[start..end].join("\n")));
            }
            index = end;
        }
        index += 1;
    }
    blocks
}

/// The block as a script: continuation lines joined, background commands logged and awaited.
fn script(block: &str, logs: &Path) -> String {
    let mut script = String::from(PRELUDE);
    let mut logical = String::new();
    let mut background = 0;
    for line in block.lines() {
        if let Some(continued) = line.strip_suffix('\\') {
            logical.push_str(continued);
            continue;
        }
        logical.push_str(line);
        let command = std::mem::take(&mut logical);
        // `COMMAND &   # comment`: the comment is dropped, the output goes to a log.
        let code = match command.find(" #") {
            // A `#` outside quotes starts a comment.
            Some(at)
                if command[..at].matches('\'').count().is_multiple_of(2)
                    && command[..at].matches('"').count().is_multiple_of(2) =>
            {
                &command[..at]
            }
            _ => command.as_str(),
        };
        match code.trim_end().strip_suffix('&') {
            Some(job) if !job.trim_end().ends_with('&') => {
                background += 1;
                let log = logs.join(format!("background-{background}.log"));
                script.push_str(&format!("{job} >{} 2>&1 &\n", log.display()));
                let marker = if job.contains(" serve") {
                    Some("serving;")
                } else if job.contains("push-listen") {
                    Some("listening")
                } else {
                    None
                };
                if let Some(marker) = marker {
                    script.push_str(&format!("readme_test_ready {} '{marker}'\n", log.display()));
                }
            }
            _ => {
                script.push_str(&command);
                script.push('\n');
            }
        }
    }
    // Whatever the block left running stops with it.
    script.push_str("kill $(jobs -p) 2>/dev/null || true\nwait || true\n");
    script
}

#[test]
fn every_readme_section_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = runnable_blocks(&readme);
    assert!(
        blocks.len() >= 6,
        "only {} runnable blocks found",
        blocks.len()
    );
    let bin_dir = Path::new(crate::cli::ROOST).parent().unwrap();
    let mut failures = Vec::new();
    for (line, block) in &blocks {
        let dir = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        // A block that hangs fails the test instead of hanging it.
        let output = Command::new("timeout")
            .args(["--kill-after=5", "300", "bash", "-c"])
            .arg(script(block, logs.path()))
            .current_dir(dir.path())
            .env("ROOST_BIN_DIR", bin_dir)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        if std::env::var_os("ROOST_README_TEST_VERBOSE").is_some() {
            eprintln!(
                "--- README.md block at line {line}: {}\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if !output.status.success() {
            failures.push(format!(
                "README.md block at line {line} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
