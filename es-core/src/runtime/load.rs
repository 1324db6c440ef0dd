//! Loading an aggregate: from its latest snapshot and the events after
//! it, or as it was at a version or a time.

use crate::aggregate::Aggregate;
use crate::error::CommandError;
use crate::store::EventStore;
use crate::version::StreamId;

use super::{AsOf, Loaded, Repository, LOAD_PAGE};

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// Loads the aggregate instance `id` by applying every stored event.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_stream(&A::stream_id(id)).await
    }

    /// Loads the aggregate as it was at a version or a time: for debugging
    /// and audits. Snapshots are not used.
    pub async fn load_as_of(
        &self,
        id: &str,
        as_of: AsOf,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let stream_id = A::stream_id(id);
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
            replayed: 0,
        };
        loop {
            let page = self
                .store
                .read_stream(&stream_id, loaded.version + 1, LOAD_PAGE)
                .await?;
            let done = page.len() < LOAD_PAGE;
            for recorded in &page {
                let past = match as_of {
                    AsOf::Version(version) => recorded.stream_version > version,
                    AsOf::Time(time) => recorded.recorded_at > time,
                };
                if past {
                    return Ok(loaded);
                }
                for event in recorded.decode_all::<A::Event>()? {
                    loaded.state.evolve(&event.data);
                }
                loaded.version = recorded.stream_version;
                loaded.replayed += 1;
            }
            if done {
                return Ok(loaded);
            }
        }
    }

    pub(super) async fn load_stream(
        &self,
        stream_id: &StreamId,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
            replayed: 0,
        };
        if let Some(policy) = &self.snapshots {
            if let Some(snapshot) = (policy.ops.load)(&self.store, stream_id).await? {
                if snapshot.schema_version != policy.schema_version {
                    tracing::info!(stream = %stream_id, found = snapshot.schema_version, current = policy.schema_version, "ignoring a snapshot of another format; replaying in full");
                } else {
                    match (policy.decode)(snapshot.state.as_str()) {
                        Ok(state) => {
                            loaded.state = state;
                            loaded.version = snapshot.version;
                        }
                        Err(error) => {
                            tracing::warn!(stream = %stream_id, version = snapshot.version, %error, "ignoring a snapshot that does not decode; replaying in full")
                        }
                    }
                }
            }
        }
        loop {
            let page = self
                .store
                .read_stream(stream_id, loaded.version + 1, LOAD_PAGE)
                .await?;
            let done = page.len() < LOAD_PAGE;
            for recorded in &page {
                for event in recorded.decode_all::<A::Event>()? {
                    loaded.state.evolve(&event.data);
                }
                loaded.version = recorded.stream_version;
                loaded.replayed += 1;
            }
            if done {
                return Ok(loaded);
            }
        }
    }
}
