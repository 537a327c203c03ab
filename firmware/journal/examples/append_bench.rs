//! Appends/s with a per-record fdatasync and with batched commits.
//!
//! `cargo run --release -p journal --example append_bench -- [DIR] [N]`
//! DIR must be on the storage you care about (a tmpfs makes fdatasync free); default: a
//! fresh directory under the system temp dir. Payloads are ~200-byte JSON decision lines.

use std::time::Instant;

use journal::{Journal, JournalConfig};

fn line(i: u64) -> Vec<u8> {
    format!(
        "{{\"ts\":\"2026-11-27T09:00:00.{i:06}Z\",\"frame\":{i},\"class\":\"hydronephrosis\",\
         \"p_abnormal\":0.91,\"probs\":[0.09,0.01,0.02,0.03,0.02,0.83],\"window\":8,\
         \"model\":\"renal-int8 1.0.0\",\"latency_ms\":31.4}}"
    )
    .into_bytes()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let n: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let dir = base.join(format!("journal-bench-{}", std::process::id()));
    let payload_len = line(0).len();

    let (mut j, _) = Journal::open(JournalConfig::new(&dir))?;
    let t = Instant::now();
    for i in 0..n {
        j.append(&line(i))?;
    }
    let single = n as f64 / t.elapsed().as_secs_f64();

    let mut rates = Vec::new();
    for batch in [8u64, 64] {
        let t = Instant::now();
        for b in 0..n / batch {
            let lines: Vec<Vec<u8>> = (0..batch).map(|k| line(b * batch + k)).collect();
            j.append_batch(&lines)?;
        }
        rates.push((
            batch,
            (n / batch * batch) as f64 / t.elapsed().as_secs_f64(),
        ));
    }
    drop(j);
    std::fs::remove_dir_all(&dir)?;

    println!(
        "dir {} ({payload_len}-byte payloads, {n} records per run)",
        base.display()
    );
    println!(
        "per-record fdatasync: {single:.0} appends/s ({:.2} ms each)",
        1e3 / single
    );
    for (batch, rate) in rates {
        println!("batches of {batch}:      {rate:.0} appends/s");
    }
    Ok(())
}
