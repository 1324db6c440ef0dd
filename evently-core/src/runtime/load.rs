//! Loading an aggregate: from its latest snapshot and the events after
//! it, or as it was at a version or a time.

use crate::aggregate::Aggregate;
use crate::error::CommandError;
use crate::store::EventStore;
use crate::version::StreamId;

use super::{AsOf, Loaded, Repository};

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
        let last = match as_of {
            AsOf::Version(version) => version,
            AsOf::Time(time) => self.last_version_by(&stream_id, time).await?,
        };
        let empty = Loaded {
            state: A::default(),
            version: 0,
            replayed: 0,
        };
        self.fold(&stream_id, empty, Some(last)).await
    }

    /// The version of the stream's last event recorded by `time` (0 if
    /// none): a fold carries no times, so a load as of a time finds its
    /// version first.
    async fn last_version_by(
        &self,
        stream_id: &StreamId,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, CommandError<A::Error>> {
        const PAGE: usize = 1024;
        let mut last = 0;
        loop {
            let page = self.store.read_stream(stream_id, last + 1, PAGE).await?;
            for event in &page {
                if event.recorded_at > time {
                    return Ok(last);
                }
                last = event.stream_version;
            }
            if page.len() < PAGE {
                return Ok(last);
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
        self.fold(stream_id, loaded, None).await
    }

    /// Applies the stream's events after `loaded.version`, as the store
    /// reads them, up to its end or to version `until`.
    async fn fold(
        &self,
        stream_id: &StreamId,
        mut loaded: Loaded<A>,
        until: Option<u64>,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let state = &mut loaded.state;
        let (version, replayed) = (&mut loaded.version, &mut loaded.replayed);
        let mut past = false;
        self.store
            .fold_stream(stream_id, *version + 1, |event| {
                past = past || until.is_some_and(|last| event.stream_version > last);
                if past {
                    return Ok::<_, CommandError<A::Error>>(());
                }
                event.decode_each::<A::Event>(stream_id, |e| state.apply(&e))?;
                *version = event.stream_version;
                *replayed += 1;
                Ok(())
            })
            .await?;
        Ok(loaded)
    }
}
