//! Private Postgres, Redis and RabbitMQ servers that a test starts on ports
//! of its own, with certificates from a test CA, and stops when it ends: for
//! tests that need a server configured differently from the shared ones
//! (TLS, a resource alarm). Each lives in a temporary directory that is
//! removed with it.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use uuid::Uuid;

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/<name>` and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    /// A server certificate for `hosts` (names or IP addresses), written
    /// into `dir` as `<stem>.crt` and `<stem>.key`.
    pub fn issue(&self, hosts: &[&str], dir: &Path, stem: &str) -> Issued {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, hosts[0]);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(kind: &str) -> Self {
        let path = std::env::temp_dir().join(format!("svc-{kind}-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// Hands the directory (recursively) to a system user, for a server
    /// that runs as that user.
    fn give_to(&self, user: &str) {
        run(Command::new("chown")
            .args(["-R", &format!("{user}:{user}")])
            .arg(&self.0));
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until something accepts connections on `port`.
fn wait_for_port(port: u16, within: Duration, what: &str, log: &Path) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} did not listen on {port} within {within:?}: {log}");
}

/// A Postgres cluster of its own that accepts only TLS connections over TCP.
pub struct PrivatePostgres {
    pub port: u16,
    data: PathBuf,
    pg_ctl: PathBuf,
    _dir: TempDir,
}

impl PrivatePostgres {
    /// `server` is the certificate it presents. With `client_ca`, a client
    /// must also present a certificate from that CA whose common name is
    /// its user name (`cert` authentication).
    pub fn start(server: &Issued, client_ca: Option<&Path>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries are installed")
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .find(|bin| bin.join("initdb").exists())
            .expect("initdb exists");
        let dir = TempDir::new("postgres");
        let data = dir.0.join("data");
        dir.give_to("postgres");
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["--no-sync", "-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        std::fs::copy(&server.cert, data.join("server.crt")).unwrap();
        std::fs::copy(&server.key, data.join("server.key")).unwrap();
        // TCP clients must speak TLS: a plaintext fallback would find no door.
        let method = if client_ca.is_some() { "cert" } else { "trust" };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\nhostssl all all 127.0.0.1/32 {method}\n"),
        )
        .unwrap();
        let mut client_ca_option = String::new();
        if let Some(ca) = client_ca {
            std::fs::copy(ca, data.join("client-ca.crt")).unwrap();
            client_ca_option = " -c ssl_ca_file=client-ca.crt".into();
        }
        dir.give_to("postgres");
        run(Command::new("chmod")
            .arg("600")
            .arg(data.join("server.key")));
        let port = free_port();
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c ssl=on -c fsync=off -c max_connections=50{client_ca_option}",
            dir.0.display()
        );
        let pg_ctl = bin.join("pg_ctl");
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&pg_ctl)
            .args(["-w", "-t", "30", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(dir.0.join("postgres.log"))
            .args(["-o", &options, "start"]));
        Self {
            port,
            data,
            pg_ctl,
            _dir: dir,
        }
    }

    /// The URL of database `name` on `host`, with `query` (`sslmode=…`).
    pub fn url(&self, host: &str, name: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/{name}?{query}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&self.pg_ctl)
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A Redis of its own that speaks only TLS, with an ACL user `svc`.
pub struct PrivateRedis {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

pub const REDIS_PASSWORD: &str = "s3cret-redis-password";

impl PrivateRedis {
    pub fn start(ca: &Path, server: &Issued) -> Self {
        let dir = TempDir::new("redis");
        let port = free_port();
        let log = dir.0.join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1", "--tls-port"])
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&server.cert)
            .arg("--tls-key-file")
            .arg(&server.key)
            .arg("--tls-ca-cert-file")
            .arg(ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir.0)
            .arg("--logfile")
            .arg(&log)
            .args(["--user", "default", "off"])
            .args(["--user", "svc", "on"])
            .arg(format!(">{REDIS_PASSWORD}"))
            .args(["~*", "&*", "+@all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        wait_for_port(port, Duration::from_secs(10), "redis-server", &log);
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self, host: &str) -> String {
        format!("rediss://svc:{REDIS_PASSWORD}@{host}:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RabbitMQ node of its own: its own node name, ports and data, owned by
/// the `rabbitmq` user, with a TLS listener or a plain one.
pub struct PrivateRabbit {
    pub port: u16,
    node: String,
    child: Child,
    _dir: TempDir,
}

/// How a private node listens.
pub enum Listener<'a> {
    Plain,
    Tls { ca: &'a Path, server: &'a Issued },
}

impl PrivateRabbit {
    pub fn start(listener: Listener<'_>) -> Self {
        let dir = TempDir::new("rabbitmq");
        let port = free_port();
        let dist_port = free_port();
        let node = format!(
            "svc-test-{}@localhost",
            &Uuid::now_v7().simple().to_string()[20..]
        );
        let mut config = String::from("loopback_users = none\n");
        match listener {
            Listener::Plain => {
                config.push_str(&format!("listeners.tcp.default = 127.0.0.1:{port}\n"))
            }
            Listener::Tls { ca, server } => {
                let copy = |from: &Path, name: &str| {
                    let to = dir.0.join(name);
                    std::fs::copy(from, &to).unwrap();
                    to.display().to_string()
                };
                config.push_str(&format!(
                    "listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{port}\n\
                     ssl_options.cacertfile = {}\nssl_options.certfile = {}\n\
                     ssl_options.keyfile = {}\nssl_options.verify = verify_none\n\
                     ssl_options.fail_if_no_peer_cert = false\n",
                    copy(ca, "ca.pem"),
                    copy(&server.cert, "server.crt"),
                    copy(&server.key, "server.key"),
                ));
            }
        }
        std::fs::write(dir.0.join("rabbitmq.conf"), config).unwrap();
        std::fs::write(dir.0.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.0.join("env.conf"), "").unwrap();
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.0.join(sub)).unwrap();
        }
        dir.give_to("rabbitmq");
        let log = dir.0.join("server.log");
        let child = Command::new("rabbitmq-server")
            .current_dir(&dir.0)
            .env("RABBITMQ_CONF_ENV_FILE", dir.0.join("env.conf"))
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.0.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.0.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.0.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.0.join("enabled_plugins"),
            )
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server runs");
        wait_for_port(port, Duration::from_secs(60), "rabbitmq-server", &log);
        Self {
            port,
            node,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://guest:guest@{host}:{}/%2f", self.port)
    }

    /// `rabbitmqctl` against this node.
    pub fn ctl(&self, args: &[&str]) {
        run(Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node])
            .args(args));
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
