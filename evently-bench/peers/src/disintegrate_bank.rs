//! The bank on disintegrate 4 (PostgreSQL store), as its README writes it:
//! events with `#[id]` fields, a state query folded from them, one
//! `Decision` per command, `decision_maker(event_store, NoSnapshot)`.

use disintegrate::serde::json::Json;
use disintegrate::{
    Decision, EventSourcedStateStore, EventStore, LoadState, NoSnapshot, StateMutate, StateQuery,
};
use disintegrate_postgres::{PgDecisionMaker, PgEventStore};
use serde::{Deserialize, Serialize};

use crate::{amount, retrying, schema_pool, Bank, BoxError};

// domain: begin (counted by `domain_lines`)
#[derive(Debug, Clone, PartialEq, Eq, disintegrate::Event, Serialize, Deserialize)]
#[stream(AccountEvent, [AccountOpened, AmountDeposited])]
pub enum DomainEvent {
    AccountOpened {
        #[id]
        account_id: String,
        owner: String,
    },
    AmountDeposited {
        #[id]
        account_id: String,
        amount: u64,
    },
}

#[derive(Default, StateQuery, Clone, Serialize, Deserialize)]
#[state_query(AccountEvent)]
pub struct Account {
    #[id]
    account_id: String,
    open: bool,
    balance: u64,
}

impl Account {
    fn new(account_id: &str) -> Self {
        Account {
            account_id: account_id.to_owned(),
            ..Default::default()
        }
    }
}

impl StateMutate for Account {
    fn mutate(&mut self, event: Self::Event) {
        match event {
            AccountEvent::AccountOpened { .. } => self.open = true,
            AccountEvent::AmountDeposited { amount, .. } => self.balance += amount,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
}

pub struct OpenAccount {
    account_id: String,
    owner: String,
}

impl Decision for OpenAccount {
    type Event = DomainEvent;
    type StateQuery = Account;
    type Error = AccountError;

    fn state_query(&self) -> Account {
        Account::new(&self.account_id)
    }

    fn process(&self, state: &Account) -> Result<Vec<DomainEvent>, AccountError> {
        if state.open {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(vec![DomainEvent::AccountOpened {
            account_id: self.account_id.clone(),
            owner: self.owner.clone(),
        }])
    }
}

pub struct Deposit {
    account_id: String,
    amount: u64,
}

impl Decision for Deposit {
    type Event = DomainEvent;
    type StateQuery = Account;
    type Error = AccountError;

    fn state_query(&self) -> Account {
        Account::new(&self.account_id)
    }

    fn process(&self, state: &Account) -> Result<Vec<DomainEvent>, AccountError> {
        if !state.open {
            return Err(AccountError::NotOpen);
        }
        Ok(vec![DomainEvent::AmountDeposited {
            account_id: self.account_id.clone(),
            amount: self.amount,
        }])
    }
}

// domain: end

/// disintegrate-postgres 4.0.1's `event_store/sql/*.sql` and the domain
/// id column its migrator adds for `account_id`, with `0xFFFFFFFF`
/// written as `4294967295` (PostgreSQL 15 has no hex literals).
const SCHEMA: &str = r#"
CREATE SEQUENCE IF NOT EXISTS seq_event_event_id;
CREATE TABLE IF NOT EXISTS event (
    event_id BIGINT PRIMARY KEY DEFAULT nextval('seq_event_event_id'),
    event_type VARCHAR(255),
    payload BYTEA,
    inserted_at TIMESTAMP DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_event_type_btree ON event(event_type);
CREATE OR REPLACE FUNCTION event_store_current_epoch()
RETURNS BIGINT AS $$
DECLARE
    persisted_event_id BIGINT;
    pending_event_id BIGINT;
    db_id INT;
BEGIN
    SELECT COALESCE(MAX(event_id), 0) INTO persisted_event_id FROM event;
    SELECT oid INTO db_id FROM pg_database WHERE datname = current_database();
    SELECT MIN((l3.objid::bigint << 32) + l2.objid::bigint)
    INTO pending_event_id
    FROM pg_locks l1
    INNER JOIN pg_locks l2 ON l1.pid = l2.pid
    INNER JOIN pg_locks l3 ON l1.pid = l3.pid
    WHERE
        l1.classid = db_id
        AND l2.classid = 1
        AND l3.classid = 2
        AND l1.locktype = 'advisory';
    RETURN LEAST(COALESCE(pending_event_id, persisted_event_id), persisted_event_id);
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION event_store_begin_epoch()
RETURNS void AS $$
DECLARE
    id BIGINT;
    db_id INT;
BEGIN
    SELECT last_value INTO id FROM seq_event_event_id;
    SELECT oid INTO db_id FROM pg_database WHERE datname = current_database();
    PERFORM pg_try_advisory_xact_lock_shared(db_id, 0);
    PERFORM pg_try_advisory_xact_lock_shared(1, (id & 4294967295)::bit(32)::integer);
    PERFORM pg_try_advisory_xact_lock_shared(2, (id >> 32)::bit(32)::integer);
END;
$$ LANGUAGE plpgsql;
ALTER TABLE event ADD COLUMN IF NOT EXISTS account_id TEXT;
CREATE INDEX IF NOT EXISTS idx_event_account_id ON event (account_id) WHERE account_id IS NOT NULL;
"#;

type Store = PgEventStore<DomainEvent, Json<DomainEvent>>;

/// Another writer appended to the account between the load and the
/// append: disintegrate's check found it, or PostgreSQL refused its
/// serializable transaction (SQLSTATE 40001, "retry it").
fn conflict(e: &disintegrate::DecisionError<AccountError>) -> bool {
    use disintegrate_postgres::Error;
    let disintegrate::DecisionError::StateStore(inner) = e else {
        return false;
    };
    match inner.downcast_ref::<Error>() {
        Some(Error::Concurrency) => true,
        Some(Error::Database(sqlx::Error::Database(db))) => db.code().as_deref() == Some("40001"),
        _ => false,
    }
}

#[derive(Clone)]
pub struct DisintegrateBank {
    store: Store,
    decisions: PgDecisionMaker<DomainEvent, Json<DomainEvent>, NoSnapshot>,
}

impl Bank for DisintegrateBank {
    const NAME: &'static str = "disintegrate";

    async fn setup(url: &str, schema: &str, pool: u32) -> Result<Self, BoxError> {
        let pool = schema_pool(url, schema, pool).await?;
        // `PgEventStore::try_new` runs disintegrate-postgres 4.0.1's
        // migration, whose `event_store_begin_epoch()` writes `0xFFFFFFFF`:
        // hex integer literals need PostgreSQL 16, and this server is 15.
        // So the same schema is created here, with the literal in decimal.
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        let store = PgEventStore::new_uninitialized(pool, Json::<DomainEvent>::default());
        Ok(DisintegrateBank {
            decisions: disintegrate_postgres::decision_maker(store.clone(), NoSnapshot),
            store,
        })
    }

    async fn open(&self, id: &str) -> Result<(), BoxError> {
        let (_, _) = retrying(
            || {
                self.decisions.make(OpenAccount {
                    account_id: id.to_owned(),
                    owner: format!("owner of {id}"),
                })
            },
            conflict,
        )
        .await?;
        Ok(())
    }

    async fn deposit(&self, id: &str, amount: u64) -> Result<u32, BoxError> {
        let (_, attempts) = retrying(
            || {
                self.decisions.make(Deposit {
                    account_id: id.to_owned(),
                    amount,
                })
            },
            conflict,
        )
        .await?;
        Ok(attempts)
    }

    async fn balance(&self, id: &str) -> Result<u64, BoxError> {
        let states = EventSourcedStateStore::new(self.store.clone(), NoSnapshot);
        let loaded = states.load(Account::new(id)).await?;
        Ok(loaded.state().balance)
    }

    async fn seed(&self, id: &str, deposits: usize) -> Result<(), BoxError> {
        let mut events = vec![DomainEvent::AccountOpened {
            account_id: id.to_owned(),
            owner: format!("owner of {id}"),
        }];
        for d in 0..deposits {
            events.push(DomainEvent::AmountDeposited {
                account_id: id.to_owned(),
                amount: amount(d),
            });
        }
        self.store.append_without_validation(events).await?;
        Ok(())
    }
}
