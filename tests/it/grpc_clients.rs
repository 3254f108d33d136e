//! gRPC clients other than tonic against the real `smb3-csi controller`
//! binary: those that send the unix socket's path as the HTTP/2 `:authority`
//! (h2 alone refuses it; `src/csi/h2fix` mends it).
//!
//! - Python `grpcio` on a default channel (`grpc.insecure_channel("unix://…")`),
//!   which sends the path as `:authority` and indexes it in its HPACK table.
//!   Needs a python3 with grpcio (`scripts/setup.sh` installs it in
//!   `~/.cache/smb3-csi/venv`); without one the test fails under `CI=true`
//!   and prints "skipped" otherwise.
//! - Hand-made HTTP/2 frames, as the kubelet 1.20 sends them, to the CSI
//!   socket and to `smb3-csi registrar`'s registration socket: no client
//!   library lets a caller set an authority that is not one.

use std::env;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DRIVER: &str = "smb3.csi.dev";

/// The driver binary serving Identity + Controller on a temporary socket.
struct Driver {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("plugins").join(DRIVER).join("csi.sock");
        let endpoint = format!("unix://{}", socket.display());
        Driver::spawn(dir, socket, &["controller", "--endpoint", &endpoint, "--driver-name", DRIVER])
    }

    /// `smb3-csi registrar` for `csi`'s socket, in the same directory.
    fn registrar(csi: &Driver) -> Driver {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("plugins_registry");
        let socket = registry.join(format!("{DRIVER}-reg.sock"));
        let args = [
            "registrar",
            "--csi-address",
            csi.socket.to_str().unwrap(),
            "--kubelet-registration-path",
            "/var/lib/kubelet/plugins/smb3.csi.dev/csi.sock",
            "--registration-dir",
            registry.to_str().unwrap(),
        ];
        Driver::spawn(dir, socket, &args)
    }

    fn spawn(dir: tempfile::TempDir, socket: PathBuf, args: &[&str]) -> Driver {
        let log = smb3_testkit::run_log::log_path("plugin").unwrap_or_else(|| dir.path().join("driver.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_smb3-csi"))
            .args(args)
            .args(["--log-level", "info,smb3_csi=debug"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let driver = Driver { child, socket, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&driver.socket).is_err() {
            assert!(Instant::now() < deadline, "driver never listened; log:\n{}", driver.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        driver
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| v == "true")
}

/// A python3 that can `import grpc`: setup.sh's venv first, then PATH.
fn python_with_grpcio() -> Option<PathBuf> {
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")));
    let venv = cache.map(|c| c.join("smb3-csi/venv/bin/python3"));
    venv.into_iter()
        .chain([PathBuf::from("python3")])
        .find(|python| Command::new(python).args(["-c", "import grpc"]).output().is_ok_and(|out| out.status.success()))
}

/// Three GetPluginInfo calls and a Probe on one default channel: the later
/// calls refer to the `:authority` the first one put in grpcio's HPACK
/// table. Prints the driver name of each reply.
const PYTHON_CLIENT: &str = r#"
import sys, grpc

def field1(message):
    # Field 1, wire type 2 (tag 0x0a), a varint length, then the string.
    assert message[:1] == b"\x0a", message
    length, shift, i = 0, 0, 1
    while True:
        byte = message[i]; i += 1
        length |= (byte & 0x7f) << shift; shift += 7
        if byte < 0x80:
            break
    return message[i:i + length].decode()

channel = grpc.insecure_channel("unix://" + sys.argv[1])
raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
info = channel.unary_unary("/csi.v1.Identity/GetPluginInfo", **raw)
probe = channel.unary_unary("/csi.v1.Identity/Probe", **raw)
for _ in range(3):
    print(field1(info(b"", timeout=10)))
probe(b"", timeout=10)
print("grpcio", grpc.__version__)
"#;

#[test]
fn python_grpcio_default_channel() {
    let Some(python) = python_with_grpcio() else {
        let what = "no python3 with grpcio (run scripts/setup.sh, or pip install grpcio)";
        assert!(!in_ci(), "CI=true and {what}");
        println!("skipped: {what}");
        return;
    };
    let driver = Driver::start();
    let out = Command::new(&python).args(["-c", PYTHON_CLIENT]).arg(&driver.socket).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python grpcio client failed:\n{stdout}\n{}\ndriver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        driver.logs()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..3], [DRIVER; 3], "{stdout}");
    assert!(lines[3].starts_with("grpcio "), "{stdout}");
    let logs = driver.logs();
    assert!(logs.contains("/csi.v1.Identity/Probe"), "{logs}");
}

fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[frame_type, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK string literal, raw, shorter than 127 bytes.
fn string(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127, "{s}");
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// A request as the kubelet 1.20 (grpc-go) sends it: the socket path as
/// `:authority`, indexed into the dynamic table.
fn request_headers(socket: &Path, method: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static 3, 6)
    block.push(0x04); // :path (static name 4), literal without indexing
    string(&mut block, method);
    block.push(0x41); // :authority (static name 1), literal with incremental indexing: entry 62
    string(&mut block, socket.to_str().unwrap());
    block.extend_from_slice(&[0x0f, 0x10]); // content-type (static name 31), without indexing
    string(&mut block, "application/grpc");
    block.push(0x00); // te: trailers, literal name
    string(&mut block, "te");
    string(&mut block, "trailers");
    block
}

/// The second request refers to the first one's `:authority` by index 62.
fn request_headers_indexed(method: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86, 0x04];
    string(&mut block, method);
    block.push(0xbe); // indexed: dynamic entry 62, the socket path
    block.extend_from_slice(&[0x0f, 0x10]);
    string(&mut block, "application/grpc");
    block.push(0x00);
    string(&mut block, "te");
    string(&mut block, "trailers");
    block
}

fn read_frame(stream: &mut UnixStream) -> (u8, u8, u32, Vec<u8>) {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).expect("server frame");
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).expect("server frame payload");
    (header[3], header[4], stream_id, payload)
}

/// Calls `method` (an empty request) twice on one connection to `driver`'s
/// socket, the second time with `:authority` by index; returns both replies.
fn two_raw_calls(driver: &Driver, method: &str) -> [Vec<u8>; 2] {
    let mut stream = UnixStream::connect(&driver.socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let empty_grpc_message = [0u8, 0, 0, 0, 0];
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    request.extend(frame(0x1, 0x4, 1, &request_headers(&driver.socket, method))); // HEADERS, END_HEADERS
    request.extend(frame(0x0, 0x1, 1, &empty_grpc_message)); // DATA, END_STREAM
    request.extend(frame(0x1, 0x4, 3, &request_headers_indexed(method)));
    request.extend(frame(0x0, 0x1, 3, &empty_grpc_message));
    stream.write_all(&request).unwrap();

    let mut replies = [Vec::new(), Vec::new()]; // DATA of streams 1 and 3
    let mut finished = [false, false];
    while finished != [true, true] {
        let (frame_type, flags, stream_id, payload) = read_frame(&mut stream);
        match frame_type {
            0x4 if flags & 0x1 == 0 => stream.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(), // ACK their SETTINGS
            0x3 => panic!("RST_STREAM on stream {stream_id}, error {payload:?}; log:\n{}", driver.logs()),
            0x7 => panic!("GOAWAY {payload:?}; log:\n{}", driver.logs()),
            0x0 | 0x1 if stream_id == 1 || stream_id == 3 => {
                let index = usize::from(stream_id == 3);
                if frame_type == 0x0 {
                    replies[index].extend_from_slice(&payload);
                }
                if flags & 0x1 != 0 {
                    finished[index] = true;
                }
            }
            _ => {}
        }
    }
    replies
}

/// The string field `tag` (field number << 3 | 2) of a gRPC reply's message.
fn string_field(reply: &[u8], tag: u8) -> &[u8] {
    // gRPC framing: a flag byte and a 4-byte length, then the message: short fields only here.
    let mut message = &reply[5..];
    while let [field_tag, len, rest @ ..] = message {
        let len = usize::from(*len);
        assert!(len < 0x80 && len <= rest.len(), "{reply:?}");
        if *field_tag == tag {
            return &rest[..len];
        }
        message = &rest[len..];
    }
    panic!("no field with tag {tag:#x} in {reply:?}");
}

#[test]
fn raw_http2_with_the_socket_path_as_authority() {
    let driver = Driver::start();
    for reply in two_raw_calls(&driver, "/csi.v1.Identity/GetPluginInfo") {
        // GetPluginInfoResponse { name = 1 }
        assert_eq!(string_field(&reply, 0x0a), DRIVER.as_bytes());
    }
}

/// The kubelet 1.20's plugin watcher calls GetInfo on the registration
/// socket the same way.
#[test]
fn registrar_answers_the_kubelet_with_the_socket_path_as_authority() {
    let driver = Driver::start();
    let registrar = Driver::registrar(&driver);
    for reply in two_raw_calls(&registrar, "/pluginregistration.Registration/GetInfo") {
        // PluginInfo { type = 1, name = 2, endpoint = 3 }
        assert_eq!(string_field(&reply, 0x0a), b"CSIPlugin");
        assert_eq!(string_field(&reply, 0x12), DRIVER.as_bytes());
    }
}
