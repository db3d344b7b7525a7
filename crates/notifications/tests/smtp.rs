//! The SMTP channel against a fake SMTP server on a local socket: the dialogue it holds and
//! how it classifies the server's answers.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::time::Duration;

use notifications::Channel;
use notifications::delivery::{DeliveryError, Notification, SmtpChannel, SmtpSettings};
use notifications::render::Kind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(30);

/// Serves one SMTP session, answering `RCPT TO` with `rcpt_answer`; returns what the client
/// sent, line by line.
async fn fake_server(rcpt_answer: &'static str) -> (u16, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let session = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut transcript = Vec::new();
        write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            transcript.push(line.clone());
            let answer: &str = if in_data {
                if line != "." {
                    continue;
                }
                in_data = false;
                "250 queued"
            } else {
                let verb = line
                    .split([' ', ':'])
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                match verb.as_str() {
                    "EHLO" | "HELO" => "250 fake",
                    "MAIL" | "RSET" | "NOOP" => "250 ok",
                    "RCPT" => rcpt_answer,
                    "DATA" => {
                        in_data = true;
                        "354 go ahead"
                    }
                    "QUIT" => {
                        write.write_all(b"221 bye\r\n").await.unwrap();
                        break;
                    }
                    _ => "502 not implemented",
                }
            };
            write
                .write_all(format!("{answer}\r\n").as_bytes())
                .await
                .unwrap();
        }
        transcript
    });
    (port, session)
}

fn settings(port: u16) -> SmtpSettings {
    SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        from: "Warren <warren@example.com>".into(),
        to_domain: "customers.example".into(),
    }
}

fn notification(customer_id: &str) -> Notification {
    Notification {
        notification_id: Uuid::now_v7(),
        customer_id: customer_id.into(),
        kind: Kind::OrderConfirmed,
        subject: Some("Order 1a2b3c4d confirmed".into()),
        message: "Your order 1a2b3c4d is confirmed: total $25.00".into(),
        created_at: chrono::Utc::now(),
        attempts: 0,
    }
}

async fn send(port: u16, n: &Notification) -> Result<(), DeliveryError> {
    let channel = SmtpChannel::new(&settings(port)).unwrap();
    testkit::within(PATIENCE, "the SMTP dialogue", channel.deliver(n)).await
}

#[tokio::test]
async fn the_smtp_channel_mails_the_customer_at_the_configured_domain() {
    let (port, session) = fake_server("250 ok").await;
    let n = notification("c-1");

    send(port, &n).await.unwrap();

    let transcript = session.await.unwrap();
    let has = |prefix: &str| transcript.iter().any(|l| l.starts_with(prefix));
    assert!(has("EHLO "), "{transcript:#?}");
    assert!(has("MAIL FROM:<warren@example.com>"), "{transcript:#?}");
    assert!(has("RCPT TO:<c-1@customers.example>"), "{transcript:#?}");
    assert!(has("DATA"), "{transcript:#?}");
    assert!(has("Subject: Order 1a2b3c4d confirmed"), "{transcript:#?}");
    assert!(has("To: c-1@customers.example"), "{transcript:#?}");
    assert!(
        has(&format!(
            "Message-ID: <{}@warren.notifications>",
            n.notification_id
        )),
        "a re-sent copy can be recognised: {transcript:#?}"
    );
    assert!(
        has("Your order 1a2b3c4d is confirmed: total $25.00"),
        "{transcript:#?}"
    );
    assert_eq!(transcript.last().map(String::as_str), Some("QUIT"));
}

#[tokio::test]
async fn a_refused_recipient_is_a_permanent_failure() {
    let (port, _session) = fake_server("550 no such user").await;

    let error = send(port, &notification("c-1")).await.unwrap_err();

    assert!(error.is_permanent(), "{error}");
}

#[tokio::test]
async fn a_busy_server_is_a_transient_failure() {
    let (port, _session) = fake_server("451 try again later").await;

    let error = send(port, &notification("c-1")).await.unwrap_err();

    assert!(matches!(error, DeliveryError::Transient(_)), "{error}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_failure() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };

    let error = send(port, &notification("c-1")).await.unwrap_err();

    assert!(matches!(error, DeliveryError::Transient(_)), "{error}");
}

#[tokio::test]
async fn a_customer_id_that_makes_no_address_is_a_permanent_failure() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };

    let error = send(port, &notification("not <an> address"))
        .await
        .unwrap_err();

    assert!(error.is_permanent(), "{error}");
    assert!(
        error.to_string().contains("not an e-mail address"),
        "{error}"
    );
}
