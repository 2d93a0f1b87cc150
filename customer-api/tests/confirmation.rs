//! Confirmation by e-mail, the customer-api's half (decision 0035): the real service on a test
//! stack of LocalStack and a fresh database, driven by commands sent onto its queue as the
//! gateway would, its events read from the gateway's queue, its mail read back from LocalStack's
//! SES (`testkit::mail`).

use std::time::Duration;

use chrono::Utc;
use sqlx::AnyPool;
use testkit::mail::{self, SentMail};
use testkit::{Backend, DEADLINE, Poll, Shown, TestDb, TestStack, eventually, on_both_backends};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utility::domain::{CustomerName, Email};
use utility::messaging::Endpoint;
use utility::messaging::bus::{Bus, Outgoing};
use utility::messaging::envelope::Envelope;
use utility::messaging::message::{
    ConfirmEnrollment, ConfirmationLink, Enroll, ForgetEnrollment, Message, ResendConfirmation,
};
use utility::runtime::config::CommonConfig;
use uuid::Uuid;

/// The customer-api running in this process, with what a test drives it through.
struct Harness {
    bus: Bus,
    pool: AnyPool,
    commands: String,
    events: String,
    /// Events received from the gateway's queue so far (each is received once).
    seen: Vec<Envelope>,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    _db: TestDb,
    // Dropped last: the service must be gone before its queues are.
    _stack: TestStack,
}

impl Harness {
    async fn start(backend: Backend, mail_from: &str) -> Self {
        testkit::init_logs();
        let bus = testkit::bus().await;
        let stack = TestStack::deploy(&bus).await;
        let db = TestDb::new(backend, "confirmation").await;
        let mut common = CommonConfig::new(([127, 0, 0, 1], 0).into(), db.url.clone());
        common.receive_wait_seconds = 1;
        common.relay_interval_ms = 200;
        common.topology.topology_stack = stack.name.clone();
        let config = customer_api::Config {
            common,
            mail_from: mail_from.to_owned(),
            ..customer_api::Config::default()
        };
        let app = customer_api::Application::build(config, bus.clone())
            .await
            .expect("customer-api starts");
        let pool = app.pool().clone();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            commands: stack.output(Endpoint::CustomerCommands.outputs().address).to_owned(),
            events: stack.output(Endpoint::GatewayEvents.outputs().address).to_owned(),
            bus,
            pool,
            seen: Vec::new(),
            shutdown,
            handle,
            _db: db,
            _stack: stack,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("stops within 30 s")
            .expect("no panic")
            .expect("stops cleanly");
    }

    /// Sends `envelope` onto the customer-api's queue, as the gateway's relay does.
    async fn send(&self, envelope: &Envelope) {
        let outcome = self
            .bus
            .send_batch(&self.commands, &[Outgoing::from(envelope)])
            .await
            .expect("send");
        assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    }

    /// Sends `message` for `enrollment` under a new message id.
    async fn command(&self, enrollment: Uuid, message: Message) -> Envelope {
        let envelope = Envelope::new(message, enrollment);
        self.send(&envelope).await;
        envelope
    }

    /// Receives what the gateway's queue holds into [`Harness::seen`].
    async fn receive(&mut self) {
        let received = self.bus.receive(&self.events, 1).await.expect("receive");
        let receipts: Vec<&str> = received.iter().map(|r| r.receipt_handle.as_str()).collect();
        if !receipts.is_empty() {
            self.bus.delete_batch(&self.events, &receipts).await.expect("delete");
        }
        for message in &received {
            self.seen.push(Envelope::parse(&message.body).expect("an envelope"));
        }
    }

    fn events_of(&self, enrollment: Uuid, kind: &str) -> Vec<Envelope> {
        self.seen
            .iter()
            .filter(|e| e.correlation_id == enrollment && e.type_name() == kind)
            .cloned()
            .collect()
    }

    /// The event `kind` of `enrollment`, waiting for it.
    async fn event(&mut self, enrollment: Uuid, kind: &str) -> Message {
        let what = format!("{kind} for {enrollment}");
        let started = tokio::time::Instant::now();
        loop {
            if let Some(found) = self.events_of(enrollment, kind).first() {
                return found.message.clone();
            }
            let seen: Vec<&str> = self.seen.iter().map(Envelope::type_name).collect();
            assert!(
                started.elapsed() < DEADLINE,
                "no {what} within {DEADLINE:?}; saw {seen:?}"
            );
            self.receive().await;
        }
    }

    /// Waits until every command sent was handled and everything it caused went out: the
    /// command queue, the outbox and the mail outbox are empty. Events are then in the gateway's
    /// queue, and mails in LocalStack.
    async fn settle(&mut self) {
        let (bus, commands, pool) = (&self.bus, &self.commands, &self.pool);
        eventually("everything handled and sent", DEADLINE, async || {
            let queued = bus.queue_depth(commands).await.expect("depth").total();
            let outbox = utility::messaging::outbox::pending(pool).await.expect("outbox");
            let mails = customer_api::mail::pending(pool).await.expect("mail outbox");
            Poll::ready_if(queued + outbox + mails == 0, (), (queued, outbox, mails))
        })
        .await
        .unwrap();
        self.receive().await;
    }

    async fn count(&self, sql: &str, enrollment: Uuid) -> i64 {
        testkit::scalar_i64(&self.pool, sql, &enrollment.to_string()).await
    }

    async fn held(&self, enrollment: Uuid) -> i64 {
        self.count(
            "SELECT COUNT(*) FROM pending_enrollments WHERE enrollment_id = $1",
            enrollment,
        )
        .await
    }

    async fn customers(&self, enrollment: Uuid) -> i64 {
        self.count(
            "SELECT COUNT(*) FROM customers WHERE enrollment_id = $1 AND status = 'active'",
            enrollment,
        )
        .await
    }

    async fn mails_of(&self, enrollment: Uuid) -> i64 {
        self.count("SELECT COUNT(*) FROM mail_outbox WHERE enrollment_id = $1", enrollment)
            .await
    }
}

/// A fresh address of its own per call, so the mails LocalStack holds for it are this test's.
fn address(label: &str) -> String {
    format!("{label}-{}@example.com", &Uuid::new_v4().simple().to_string()[..12])
}

fn link(hours: i64) -> ConfirmationLink {
    ConfirmationLink {
        url: format!("http://gateway.test/confirm#{}", Uuid::new_v4().simple()),
        expires_at: Utc::now() + chrono::Duration::hours(hours),
    }
}

fn enroll(email: &str, confirmation: Option<ConfirmationLink>) -> Message {
    Message::Enroll(Enroll {
        name: CustomerName::parse("Ada Lovelace").unwrap(),
        email: Email::parse(email).unwrap(),
        confirmation,
    })
}

fn confirmation_requested(message: &Message) -> bool {
    match message {
        Message::ConfirmationRequested(requested) => requested.already_enrolled,
        other => panic!("not ConfirmationRequested: {other:?}"),
    }
}

/// A new address gets one mail with the link, the enrollment is held (no customer) until
/// `ConfirmEnrollment`, which creates the customer and forgets what was held; an `Enroll`
/// arriving again under a new message id mails nothing more; a resend mails the new link.
async fn a_new_address_is_mailed_the_link_and_enrolled_once_confirmed(backend: Backend) {
    let mut harness = Harness::start(backend, utility::domain::DEFAULT_MAIL_FROM).await;
    let email = address("new");
    let id = Uuid::now_v7();
    let offer = link(24);
    let first = harness.command(id, enroll(&email, Some(offer.clone()))).await;
    // The same envelope again (a redelivery) and the same enrollment under a new message id.
    harness.send(&first).await;
    harness.command(id, enroll(&email, Some(offer.clone()))).await;

    let requested = harness.event(id, "ConfirmationRequested").await;
    assert!(
        !confirmation_requested(&requested),
        "a new address is not already enrolled"
    );
    let sent: SentMail = mail::wait_for_one(&email).await;
    assert_eq!(sent.source, utility::domain::DEFAULT_MAIL_FROM);
    assert_eq!(sent.link(), Some(offer.url.as_str()));
    assert_eq!(sent.token(), offer.url.split_once('#').map(|(_, t)| t));
    assert!(
        !sent.text.contains("Ada"),
        "the mail repeats what the enrolling party typed"
    );
    harness.settle().await;
    assert_eq!(
        mail::sent_to(&email).await.unwrap().len(),
        1,
        "one mail for three deliveries"
    );
    assert_eq!(harness.events_of(id, "ConfirmationRequested").len(), 1);
    assert_eq!(harness.held(id).await, 1);
    assert_eq!(
        harness.customers(id).await,
        0,
        "nothing is enrolled before the confirmation"
    );
    assert_eq!(harness.mails_of(id).await, 0, "a sent mail leaves the mail outbox");

    // A lost mail: the resend carries a new link.
    let again = link(24);
    harness
        .command(
            id,
            Message::ResendConfirmation(ResendConfirmation {
                confirmation: again.clone(),
            }),
        )
        .await;
    let mails = mail::wait_for(&email, 2, DEADLINE).await;
    assert_eq!(mails[1].link(), Some(again.url.as_str()));

    harness
        .command(id, Message::ConfirmEnrollment(ConfirmEnrollment {}))
        .await;
    let Message::CustomerEnrolled(enrolled) = harness.event(id, "CustomerEnrolled").await else {
        unreachable!()
    };
    assert_eq!(enrolled.email.as_str(), email);
    assert_eq!(enrolled.name.as_str(), "Ada Lovelace");
    assert_eq!(harness.customers(id).await, 1);
    assert_eq!(
        harness.held(id).await,
        0,
        "the held enrollment is forgotten once confirmed"
    );

    // Confirmed again (a new message id): nothing held, nothing done.
    harness
        .command(id, Message::ConfirmEnrollment(ConfirmEnrollment {}))
        .await;
    harness.settle().await;
    assert_eq!(harness.events_of(id, "CustomerEnrolled").len(), 1);
    assert!(
        harness.events_of(id, "ConfirmationLapsed").is_empty(),
        "an enrollment confirmed before has not lapsed"
    );
    assert_eq!(harness.customers(id).await, 1);
    harness.stop().await;
}

/// An address that already has a customer (here under another sub-address, which folds onto
/// it) gets a note without a link; the event says so, for the operator view only.
async fn an_enrolled_address_is_mailed_a_note_without_a_link(backend: Backend) {
    let mut harness = Harness::start(backend, utility::domain::DEFAULT_MAIL_FROM).await;
    let email = address("taken");
    let owner = Uuid::now_v7();
    harness.command(owner, enroll(&email, None)).await;
    harness.event(owner, "CustomerEnrolled").await;

    let tagged = email.replacen('@', "+promo@", 1);
    let id = Uuid::now_v7();
    let offer = link(24);
    harness.command(id, enroll(&tagged, Some(offer.clone()))).await;
    let requested = harness.event(id, "ConfirmationRequested").await;
    assert!(confirmation_requested(&requested), "the address already has a customer");
    let note = mail::wait_for_one(&tagged).await;
    assert_eq!(note.link(), None, "a note, not a link: {}", note.text);
    assert!(!note.text.contains(&offer.url));
    assert!(note.text.contains("already enrolled"), "{}", note.text);
    assert_eq!(harness.held(id).await, 1);

    // Confirming it anyway (no link was sent, but the command may come) is answered as an
    // enrollment of a taken address is.
    harness
        .command(id, Message::ConfirmEnrollment(ConfirmEnrollment {}))
        .await;
    harness.event(id, "EnrollmentRejected").await;
    assert_eq!(harness.customers(id).await, 0);
    assert_eq!(harness.held(id).await, 0);
    harness.stop().await;
}

/// `ForgetEnrollment` deletes the held name and address and the enrollment's mails; the sweep
/// does the same past the deadline without any command. Afterwards a confirmation or a resend
/// finds nothing and does nothing.
async fn what_was_held_is_forgotten(backend: Backend) {
    let mut harness = Harness::start(backend, utility::domain::DEFAULT_MAIL_FROM).await;
    let (forgotten, expired) = (Uuid::now_v7(), Uuid::now_v7());
    let (forgotten_email, expired_email) = (address("forget"), address("expire"));
    let (forgotten_link, expired_link) = (link(24), link(24));
    harness
        .command(forgotten, enroll(&forgotten_email, Some(forgotten_link.clone())))
        .await;
    harness
        .command(expired, enroll(&expired_email, Some(expired_link.clone())))
        .await;
    harness.event(forgotten, "ConfirmationRequested").await;
    harness.event(expired, "ConfirmationRequested").await;
    assert_eq!(harness.held(forgotten).await, 1);

    harness
        .command(
            forgotten,
            Message::ForgetEnrollment(ForgetEnrollment {
                reason: "expired".to_owned(),
            }),
        )
        .await;
    let pool = harness.pool.clone();
    eventually("the held enrollment forgotten", DEADLINE, async || {
        let held = testkit::scalar_i64(
            &pool,
            "SELECT COUNT(*) FROM pending_enrollments WHERE enrollment_id = $1",
            &forgotten.to_string(),
        )
        .await;
        Poll::ready_if(held == 0, (), held)
    })
    .await
    .unwrap();
    assert_eq!(harness.mails_of(forgotten).await, 0);

    // Past its deadline (and the grace), the sweep forgets it with its mails, sent or not. (The
    // second mail goes to an address of its own: the running relay may send it first, and the
    // end of the test counts what reached `expired_email`.)
    customer_api::mail::enqueue(
        &mut harness.pool.acquire().await.unwrap(),
        expired,
        &customer_api::mail::already_enrolled(&Email::parse(&address("expire-note")).unwrap()),
    )
    .await
    .unwrap();
    sqlx::query("UPDATE pending_enrollments SET expires_at = $1 WHERE enrollment_id = $2")
        .bind(utility::storage::timestamp(Utc::now() - chrono::Duration::hours(1)))
        .bind(expired.to_string())
        .execute(&harness.pool)
        .await
        .unwrap();
    let swept = customer_api::confirmation::forget_expired(&harness.pool).await.unwrap();
    assert_eq!(swept, 1);
    assert_eq!(harness.held(expired).await, 0);
    assert_eq!(harness.mails_of(expired).await, 0);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pending_enrollments WHERE email = $1 OR email = $2")
        .bind(&forgotten_email)
        .bind(&expired_email)
        .fetch_one(&harness.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "an address outlived its enrollment");

    for id in [forgotten, expired] {
        harness
            .command(id, Message::ConfirmEnrollment(ConfirmEnrollment {}))
            .await;
        harness
            .command(
                id,
                Message::ResendConfirmation(ResendConfirmation { confirmation: link(24) }),
            )
            .await;
    }
    // An Enroll arriving after its deadline is not held either.
    let late = Uuid::now_v7();
    harness.command(late, enroll(&address("late"), Some(link(-1)))).await;
    harness.settle().await;
    for id in [forgotten, expired, late] {
        assert_eq!(harness.customers(id).await, 0);
        assert_eq!(harness.held(id).await, 0);
        assert!(harness.events_of(id, "CustomerEnrolled").is_empty());
    }
    assert!(harness.events_of(late, "ConfirmationRequested").is_empty());
    // A confirmation that comes after the enrollment was forgotten is answered, so the saga
    // does not wait for ever in `confirmed`: once per confirmation, nothing for the resends.
    for id in [forgotten, expired] {
        harness.event(id, "ConfirmationLapsed").await;
    }
    harness.settle().await;
    for id in [forgotten, expired] {
        assert_eq!(harness.events_of(id, "ConfirmationLapsed").len(), 1);
    }
    // The first mail each at most, nothing else: the resends found nothing to mail. (The first
    // may have gone out before it was forgotten, or not; mail goes out at least once, so on a
    // loaded machine a send that timed out after reaching SES is sent again: copies of the first
    // are allowed. A resend would carry a link of its own.)
    for (email, first) in [(&forgotten_email, &forgotten_link), (&expired_email, &expired_link)] {
        let links: Vec<Option<String>> = mail::sent_to(email)
            .await
            .unwrap()
            .iter()
            .map(|m| m.link().map(str::to_owned))
            .collect();
        assert!(
            links.iter().all(|l| l.as_deref() == Some(first.url.as_str())),
            "{email}: a mail other than the first: {links:?}"
        );
    }
    harness.stop().await;
}

/// A mail SES refuses for good (here: from a sender identity nobody verified) is set aside with
/// SES's reason and counted, not tried again and again.
async fn a_mail_ses_refuses_is_set_aside(backend: Backend) {
    let unverified = format!("nobody-{}@enrollment.local", &Uuid::new_v4().simple().to_string()[..8]);
    let mut harness = Harness::start(backend, &unverified).await;
    let email = address("refused");
    let id = Uuid::now_v7();
    harness.command(id, enroll(&email, Some(link(24)))).await;
    harness.event(id, "ConfirmationRequested").await;
    let pool = harness.pool.clone();
    let error = eventually("the mail set aside", DEADLINE, async || {
        let row: Option<(Option<String>, i64)> =
            sqlx::query_as("SELECT error, attempts FROM mail_outbox WHERE enrollment_id = $1")
                .bind(id.to_string())
                .fetch_optional(&pool)
                .await
                .unwrap();
        let error = row.as_ref().and_then(|(error, _)| error.clone());
        let shown = Shown(format!("{row:?}"));
        Poll::ready_if(error.is_some(), row, shown)
    })
    .await
    .unwrap();
    let (error, attempts) = error.unwrap();
    assert!(error.unwrap().starts_with("MessageRejected"), "SES's reason is kept");
    assert_eq!(attempts, 1);
    assert_eq!(customer_api::mail::pending(&harness.pool).await.unwrap(), 0);
    // Given the relay's time for a few more rounds, it is still tried once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let attempts = harness
        .count("SELECT attempts FROM mail_outbox WHERE enrollment_id = $1", id)
        .await;
    assert_eq!(attempts, 1, "a refused mail is tried again");
    assert!(mail::sent_to(&email).await.unwrap().is_empty());
    harness.stop().await;
}

on_both_backends!(
    a_new_address_is_mailed_the_link_and_enrolled_once_confirmed,
    an_enrolled_address_is_mailed_a_note_without_a_link,
    what_was_held_is_forgotten,
    a_mail_ses_refuses_is_set_aside,
);
