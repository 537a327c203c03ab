//! A real PACS for tests: Debian's Orthanc, started in the foreground with a temporary JSON
//! configuration on loopback high ports, stopped (killed) when dropped. Its REST API checks
//! what arrived.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Orthanc.
pub struct Orthanc {
    child: Option<Child>,
    dir: PathBuf,
    /// Its DICOM port.
    pub dicom_port: u16,
    /// Its HTTP (REST) port.
    pub http_port: u16,
    /// Its AE title.
    pub aet: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The Orthanc binary (`/usr/sbin/Orthanc` on Debian), or a panic naming the fix.
fn binary() -> PathBuf {
    for p in ["/usr/sbin/Orthanc", "/usr/bin/Orthanc"] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    panic!("Orthanc is not installed: run scripts/setup.sh (Debian package orthanc)");
}

impl Orthanc {
    /// Starts Orthanc with its storage under `dir` (kept across restarts of the same `dir`).
    pub fn start(dir: &Path) -> Self {
        Self::start_on_free_ports(dir, serde_json::json!({}))
    }

    /// Starts Orthanc on given ports (a restart keeps the address the outbox knows).
    pub fn start_on(dir: &Path, dicom_port: u16, http_port: u16) -> Self {
        Self::start_with(dir, dicom_port, http_port, serde_json::json!({}))
            .unwrap_or_else(|log| panic!("Orthanc did not start:\n{log}"))
    }

    /// Starts Orthanc on free ports with `extra` configuration keys (DICOM TLS, say).
    pub fn start_configured(dir: &Path, extra: serde_json::Value) -> Self {
        Self::start_on_free_ports(dir, extra)
    }

    /// On ports picked here: a free port can be taken between the pick and Orthanc's bind
    /// (tests beside it open connections), so a port in use is picked again, a few times.
    fn start_on_free_ports(dir: &Path, extra: serde_json::Value) -> Self {
        let mut log = String::new();
        for _ in 0..3 {
            match Self::start_with(dir, free_port(), free_port(), extra.clone()) {
                Ok(o) => return o,
                Err(l) if l.contains("already in use") => log = l,
                Err(l) => panic!("Orthanc did not start:\n{l}"),
            }
        }
        panic!("Orthanc did not start (its ports were taken three times):\n{log}")
    }

    /// Starts Orthanc; its log when it exits or does not answer within 30 s.
    fn start_with(
        dir: &Path,
        dicom_port: u16,
        http_port: u16,
        extra: serde_json::Value,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).unwrap();
        let mut cfg = serde_json::json!({
            "Name": "renalscan-test",
            "StorageDirectory": dir.join("storage"),
            "IndexDirectory": dir.join("index"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomCheckCalledAet": true,
            "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowEcho": true,
            "Plugins": [],
        });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let path = dir.join("orthanc.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let log = std::fs::File::create(dir.join("orthanc.log")).unwrap();
        let child = Command::new(binary())
            .arg(&path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("Orthanc starts");
        let mut o = Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            dicom_port,
            http_port,
            aet: "ORTHANC".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while o.get("/system").is_err() {
            let exited = o
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                return Err(o.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(o)
    }

    /// `AET@127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("{}@127.0.0.1:{}", self.aet, self.dicom_port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// GET a JSON resource.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        ureq::get(&self.url(path))
            .timeout(Duration::from_secs(10))
            .call()
            .map_err(|e| e.to_string())?
            .into_json()
            .map_err(|e| e.to_string())
    }

    /// GET raw bytes (a preview PNG).
    pub fn get_bytes(&self, path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        ureq::get(&self.url(path))
            .timeout(Duration::from_secs(10))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_reader()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// The Orthanc id of the instance with this SOP Instance UID.
    pub fn lookup(&self, sop_instance_uid: &str) -> Option<String> {
        let v: serde_json::Value = ureq::post(&self.url("/tools/lookup"))
            .timeout(Duration::from_secs(10))
            .send_string(sop_instance_uid)
            .ok()?
            .into_json()
            .ok()?;
        v.as_array()?
            .iter()
            .find(|e| e["Type"] == "Instance")
            .and_then(|e| e["ID"].as_str())
            .map(str::to_string)
    }

    /// How many instances it holds.
    pub fn instance_count(&self) -> usize {
        self.get("/instances")
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// Kills it (a PACS that goes away); `start_on` with the same ports brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("orthanc.log")).unwrap_or_default()
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.stop();
    }
}
