//! An SMTP server for the tests: it speaks real SMTP over TCP on 127.0.0.1 (EHLO/HELO, MAIL,
//! RCPT, DATA, RSET, NOOP, QUIT, several transactions per connection, dot-stuffing), keeps every
//! message it was given, and can be told to refuse: a recipient with a 5xx, the next messages with
//! a 4xx after DATA, or every connection (as if the server were down). Benchmarks use it too,
//! counting messages instead of keeping them, so not every part is used everywhere.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One message as the server saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
    /// The reply given at the end of DATA ("250 ...", or the injected "451 ...").
    pub reply: String,
}

impl Received {
    pub fn accepted(&self) -> bool {
        self.reply.starts_with('2')
    }

    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("a parsable message")
    }
}

#[derive(Default)]
struct Behaviour {
    /// Replies to RCPT TO for these addresses (lower case).
    rcpt_replies: HashMap<String, String>,
    /// Replies at the end of DATA for the next messages, in order.
    data_replies: Vec<String>,
    /// Close every new connection at once, without a greeting.
    down: bool,
}

#[derive(Default)]
struct Shared {
    messages: Vec<Received>,
    behaviour: Behaviour,
    /// Counting only: messages are accepted and counted, not kept (for benchmarks that send
    /// more mail than memory holds).
    counting: bool,
    accepted: usize,
}

pub struct SmtpServer {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        Self::start_with(Shared::default()).await
    }

    /// A server that accepts every message and only counts them ([`Self::accepted_count`]).
    pub async fn start_counting() -> SmtpServer {
        Self::start_with(Shared {
            counting: true,
            ..Shared::default()
        })
        .await
    }

    async fn start_with(shared: Shared) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Mutex::new(shared));
        let state = shared.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = session(socket, state).await;
                });
            }
        });
        SmtpServer { port, shared }
    }

    /// The `email.smtp_url` that points the daemon here.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received, refused ones included, in arrival order.
    pub fn all(&self) -> Vec<Received> {
        self.shared.lock().unwrap().messages.clone()
    }

    /// How many messages the server accepted (also in counting mode).
    pub fn accepted_count(&self) -> usize {
        self.shared.lock().unwrap().accepted
    }

    /// The messages the server accepted.
    pub fn accepted(&self) -> Vec<Received> {
        self.all().into_iter().filter(|m| m.accepted()).collect()
    }

    /// Answer `reply` (e.g. "550 5.1.1 no such user") to RCPT TO for `address`.
    pub fn refuse_recipient(&self, address: &str, reply: &str) {
        self.shared
            .lock()
            .unwrap()
            .behaviour
            .rcpt_replies
            .insert(address.to_ascii_lowercase(), reply.to_string());
    }

    pub fn accept_recipient(&self, address: &str) {
        self.shared
            .lock()
            .unwrap()
            .behaviour
            .rcpt_replies
            .remove(&address.to_ascii_lowercase());
    }

    /// Answer `reply` at the end of DATA for the next `count` messages (they are kept, refused).
    pub fn refuse_next(&self, count: usize, reply: &str) {
        let mut s = self.shared.lock().unwrap();
        for _ in 0..count {
            s.behaviour.data_replies.push(reply.to_string());
        }
    }

    /// While down, every connection is closed before the greeting.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().unwrap().behaviour.down = down;
    }

    /// Waits until at least `n` messages were accepted; panics after `within`.
    pub async fn wait_accepted(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} accepted messages, got {}: {:?}",
                    got.len(),
                    self.all()
                        .iter()
                        .map(|m| (&m.rcpt_to, &m.reply))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn address_in(arg: &str) -> String {
    let start = arg.find('<').map(|i| i + 1).unwrap_or(0);
    let end = arg[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(arg.len());
    arg[start..end].trim().to_string()
}

async fn session(socket: tokio::net::TcpStream, shared: Arc<Mutex<Shared>>) -> std::io::Result<()> {
    if shared.lock().unwrap().behaviour.down {
        return Ok(());
    }
    socket.set_nodelay(true)?;
    let (reader, mut writer) = socket.into_split();
    let mut reader = BufReader::new(reader);
    writer.write_all(b"220 127.0.0.1 ESMTP test\r\n").await?;
    let mut mail_from = String::new();
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-127.0.0.1\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 20000000".into()
        } else if upper.starts_with("HELO") {
            "250 127.0.0.1".into()
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = address_in(&text[10..]);
            rcpt_to.clear();
            "250 2.1.0 ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let address = address_in(&text[8..]);
            let refused = shared
                .lock()
                .unwrap()
                .behaviour
                .rcpt_replies
                .get(&address.to_ascii_lowercase())
                .cloned();
            match refused {
                Some(r) => r,
                None => {
                    rcpt_to.push(address);
                    "250 2.1.5 ok".into()
                }
            }
        } else if upper == "DATA" {
            if rcpt_to.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                writer.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = Vec::new();
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    let body: &[u8] = if line.starts_with(b"..") {
                        &line[1..]
                    } else {
                        &line
                    };
                    data.extend_from_slice(body);
                }
                let mut s = shared.lock().unwrap();
                let reply = if s.behaviour.data_replies.is_empty() {
                    "250 2.0.0 queued".to_string()
                } else {
                    s.behaviour.data_replies.remove(0)
                };
                if reply.starts_with('2') {
                    s.accepted += 1;
                }
                if s.counting {
                    rcpt_to.clear();
                } else {
                    s.messages.push(Received {
                        mail_from: mail_from.clone(),
                        rcpt_to: std::mem::take(&mut rcpt_to),
                        data,
                        reply: reply.clone(),
                    });
                }
                reply
            }
        } else if upper.starts_with("RSET") {
            rcpt_to.clear();
            "250 2.0.0 ok".into()
        } else if upper.starts_with("NOOP") {
            "250 2.0.0 ok".into()
        } else if upper.starts_with("QUIT") {
            writer.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.2 command not implemented".into()
        };
        // One write per reply, as a server's buffered output does: two small writes would wait
        // on each other (Nagle and the client's delayed ACK).
        writer.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}
