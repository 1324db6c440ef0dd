//! The write path: one transaction on the one write connection, with the
//! file's write lock taken up front (`BEGIN IMMEDIATE`).

use evently_core::{CommandRecord, RecordedEvent, StoreError, StreamAppend};
use sqlx::sqlite::SqliteConnection;

use crate::error::{self, SQLITE_BUSY, SQLITE_LOCKED};
use crate::inline::Inlines;
use crate::SqliteEventStore;

mod checked;
mod fast;

pub(crate) use checked::insert_command;
use checked::write_checked;
use fast::{write_fast, Fast};

/// Starts a write transaction, waiting for another process's lock up to
/// the busy time-out. A transaction left open by a write whose future was
/// dropped midway (a cancelled caller, an aborted runner) is rolled back
/// first: it never committed, and its caller never got an answer.
pub(crate) async fn begin(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    match sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("within a transaction") => {
            sqlx::query("ROLLBACK")
                .execute(&mut *conn)
                .await
                .map_err(error::store)?;
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(busy)
        }
        Err(e) => Err(busy(e)),
    }
}

fn busy(e: sqlx::Error) -> StoreError {
    match error::code(&e) {
        Some(SQLITE_BUSY | SQLITE_LOCKED) => StoreError::unavailable(format!(
            "the event store's file is locked by another process for longer than the busy time-out: {e}"
        )),
        _ => error::store(e),
    }
}

/// Commits on `Ok`, rolls back on `Err`.
pub(crate) async fn finish<T>(
    conn: &mut SqliteConnection,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match result {
        Ok(value) => match sqlx::query("COMMIT").execute(&mut *conn).await {
            Ok(_) => Ok(value),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(error::store(e))
            }
        },
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

impl SqliteEventStore {
    /// Runs `f` in a write transaction on the write connection.
    pub(crate) async fn in_write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(
            &'c mut SqliteConnection,
        ) -> futures::future::BoxFuture<'c, Result<T, StoreError>>,
    {
        reentry()?;
        let mut conn = self.inner.writer.lock().await;
        begin(&mut conn).await?;
        let result = f(&mut conn).await;
        finish(&mut conn, result).await
    }

    /// Appends (checked all first, then written, all or nothing), with the
    /// command that caused them when there is one.
    ///
    /// Group commit: the append joins a queue, then waits for its answer
    /// or the write connection; whoever holds the connection writes every
    /// queued append in one transaction (a refused append rolls back
    /// alone), with one sync to disk for all of them. Alone, an append is
    /// its own group.
    pub(crate) async fn append_now(
        &self,
        writes: Vec<StreamAppend>,
        command: Option<&CommandRecord>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        evently_core::backend::check_appends(&writes)?;
        reentry()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Pending {
                writes,
                command: command.cloned(),
                reply,
            });
        // Whichever comes first: the answer (another append's holder wrote
        // this one in its group) or the write connection. Waiting for the
        // connection alone would make every append take its turn even when
        // its group was written long ago, and every turn write one append.
        let mut answer = answer;
        tokio::select! {
            biased;
            answered = &mut answer => {
                return answered.unwrap_or_else(|_| Err(dropped()));
            }
            mut conn = self.inner.writer.clone().lock_owned() => {
                // The group commits on a task of its own: a caller that
                // stops waiting (a time-out, a cancelled request) cannot
                // cut a write off half-way, and every append of the group
                // gets its true answer.
                let store = self.clone();
                let committed = tokio::spawn(async move {
                    let batch = std::mem::take(
                        &mut *store.inner.queue.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    if !batch.is_empty() {
                        let head = commit_group(&mut conn, batch, &store.inner.inline).await;
                        store.publish(head);
                    }
                });
                drop(committed);
            }
        }
        answer.await.unwrap_or_else(|_| Err(dropped()))
    }
}

/// The answer of an append whose group's task ended without answering
/// (it panicked, or the runtime shut down).
fn dropped() -> StoreError {
    StoreError::unavailable(
        "the append's group ended without an answer (its task stopped): it may or may not be stored; \
         retrying it with the same event ids is safe",
    )
}

/// Refuses a write from inside a projection's batch (which holds the
/// writer) instead of waiting for ever.
fn reentry() -> Result<(), StoreError> {
    if crate::projection::IN_BATCH.try_with(|_| ()).is_ok() {
        return Err(StoreError::Backend(
            "a projection's handler on SQLite cannot write through the store: its batch holds the file's one writer \
             (write through the handler's connection instead, or say the projection does not use its sink: `Projection::uses_sink`)"
                .into(),
        ));
    }
    Ok(())
}

/// An append waiting for the write connection.
pub(crate) struct Pending {
    writes: Vec<StreamAppend>,
    command: Option<CommandRecord>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<RecordedEvent>>, StoreError>>,
}

/// What an append came to: the events stored, per stream, and the head.
type Outcome = Result<(Vec<Vec<RecordedEvent>>, u64), StoreError>;

/// Writes a group of appends in one transaction and answers each; returns
/// the head after it.
async fn commit_group(conn: &mut SqliteConnection, group: Vec<Pending>, inline: &Inlines) -> u64 {
    if !inline.is_empty() {
        return commit_checked(conn, group, inline).await;
    }
    // One append alone: one round trip, in a transaction of its own.
    if let [p] = &group[..] {
        match write_fast(conn, &p.writes, p.command.as_ref(), true).await {
            Fast::Done((results, head)) => {
                if let Some(p) = group.into_iter().next() {
                    let _ = p.reply.send(Ok(results));
                }
                return head;
            }
            Fast::NotTaken => {}
            Fast::Undo => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            }
        }
    }
    if let Err(e) = begin(conn).await {
        return refuse_all(group, &e.to_string());
    }
    let outcomes = match write_group(conn, &group, inline).await {
        Some(outcomes) => outcomes,
        None => {
            // A check refused an append after part of it was written: the
            // group again, the careful way.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            if let Err(e) = begin(conn).await {
                return refuse_all(group, &e.to_string());
            }
            let mut outcomes = Vec::with_capacity(group.len());
            for p in &group {
                outcomes.push(careful(conn, p, group.len() == 1, inline).await);
            }
            outcomes
        }
    };
    // An append alone needs no savepoint: refused, the whole transaction
    // rolls back.
    answer(conn, group, outcomes).await
}

/// A group the checked way only, each append with the inline
/// projections applied to what it stored, in a savepoint of its own unless
/// it is alone.
async fn commit_checked(conn: &mut SqliteConnection, group: Vec<Pending>, inline: &Inlines) -> u64 {
    if let Err(e) = begin(conn).await {
        return refuse_all(group, &e.to_string());
    }
    let mut outcomes = Vec::with_capacity(group.len());
    for p in &group {
        outcomes.push(careful(conn, p, group.len() == 1, inline).await);
    }
    answer(conn, group, outcomes).await
}

/// Commits (or, for a refused append alone, rolls back) and answers each
/// append; the head after it.
async fn answer(conn: &mut SqliteConnection, group: Vec<Pending>, outcomes: Vec<Outcome>) -> u64 {
    let end = if group.len() == 1 && outcomes[0].is_err() {
        "ROLLBACK"
    } else {
        "COMMIT"
    };
    if let Err(e) = sqlx::query(end).execute(&mut *conn).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return refuse_all(
            group,
            &format!("the commit failed, nothing of this append was stored: {e}"),
        );
    }
    let mut head = 0;
    for (p, outcome) in group.into_iter().zip(outcomes) {
        if let Ok((_, h)) = &outcome {
            head = head.max(*h);
        }
        let _ = p.reply.send(outcome.map(|(results, _)| results));
    }
    head
}

/// Answers every append of the group with `message`; the head is unmoved.
fn refuse_all(group: Vec<Pending>, message: &str) -> u64 {
    for p in group {
        let _ = p
            .reply
            .send(Err(StoreError::unavailable(message.to_owned())));
    }
    0
}

/// Each append of the group the fast way where it can, else the careful
/// way; `None` when a fast attempt was refused after writing part of it.
async fn write_group(
    conn: &mut SqliteConnection,
    group: &[Pending],
    inline: &Inlines,
) -> Option<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(group.len());
    for p in group {
        match write_fast(conn, &p.writes, p.command.as_ref(), false).await {
            Fast::Done(done) => outcomes.push(Ok(done)),
            Fast::Undo => return None,
            Fast::NotTaken => outcomes.push(careful(conn, p, group.len() == 1, inline).await),
        }
    }
    Some(outcomes)
}

/// The careful way: every check first, then the writes; in a savepoint
/// of its own unless it is alone in its transaction.
async fn careful(
    conn: &mut SqliteConnection,
    p: &Pending,
    alone: bool,
    inline: &Inlines,
) -> Outcome {
    if !alone {
        sqlx::query("SAVEPOINT append")
            .execute(&mut *conn)
            .await
            .map_err(error::store)?;
    }
    let result = match write_checked(conn, &p.writes, p.command.as_ref()).await {
        Ok((results, head, fresh)) if !inline.is_empty() => {
            // The inline projections see what this append stored, not
            // what an earlier try of it did.
            let stored: Vec<RecordedEvent> = results
                .iter()
                .zip(&fresh)
                .filter(|(_, fresh)| **fresh)
                .flat_map(|(events, _)| events.iter().cloned())
                .collect();
            inline.apply(conn, &stored).await.map(|()| (results, head))
        }
        written => written.map(|(results, head, _)| (results, head)),
    };
    if !alone {
        let end = if result.is_ok() {
            "RELEASE append"
        } else {
            "ROLLBACK TO append; RELEASE append"
        };
        sqlx::Executor::execute(&mut *conn, end)
            .await
            .map_err(error::store)?;
    }
    result
}
