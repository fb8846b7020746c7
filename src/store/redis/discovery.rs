//! Finding the master: asking the sentinels (or the one endpoint), confirming with `ROLE`,
//! keeping it confirmed, and following `+switch-master`.

use super::*;

/// What one sentinel says about the monitored master.
pub(super) struct SentinelView {
    pub(super) master: (String, u16),
    /// Replicas not flagged down or disconnected.
    pub(super) replicas: Vec<(String, u16)>,
    /// Every replica the sentinel knows of.
    pub(super) known_replicas: usize,
}

/// `SENTINEL <subcommand> <name>` within `deadline`.
pub(super) async fn sentinel_query<T: redis::FromRedisValue>(
    sentinel: &mut MultiplexedConnection,
    addr: &str,
    subcommand: &'static str,
    name: &str,
    deadline: Duration,
) -> Result<T, Fault> {
    let mut command = redis::cmd("SENTINEL");
    command.arg(subcommand).arg(name);
    within(
        || addr.to_owned(),
        subcommand,
        deadline,
        command.query_async(sentinel),
    )
    .await
}

impl Shared {
    /// Deadline for each step of finding a master: short, so that a frozen server costs
    /// little before the next candidate is tried.
    pub(super) fn discovery_timeout(&self) -> Duration {
        self.timeout.min(Duration::from_secs(1))
    }

    /// `ROLE` of a connection: the role name and, for a master, its connected replicas.
    pub(super) async fn role(
        &self,
        conn: &mut MultiplexedConnection,
        addr: &str,
    ) -> Result<(String, usize), Fault> {
        let command = redis::cmd("ROLE");
        let query = command.query_async::<Value>(conn);
        let value = within(|| addr.to_owned(), "ROLE", self.discovery_timeout(), query).await?;
        let reply = || Fault::RoleReply {
            addr: addr.to_owned(),
        };
        let Value::Array(items) = value else {
            return Err(reply());
        };
        let role = match items.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return Err(reply()),
        };
        let replicas = match items.get(2) {
            Some(Value::Array(list)) if role == "master" => list.len(),
            _ => 0,
        };
        Ok((role, replicas))
    }

    /// Finds and installs the master (and, with Sentinel, the replicas).
    pub(super) async fn discover(&self) -> Result<(), Fault> {
        match &self.topology {
            Topology::Direct { host, port } => {
                let (mut conn, replicas) = self.confirm_master(host, *port).await?;
                self.learn_replicas_seen(&mut conn, replicas).await;
                self.check_not_lonely(host, *port, replicas)?;
                self.install_master(host.clone(), *port, conn, replicas)
                    .await;
                Ok(())
            }
            Topology::Sentinel {
                sentinels,
                master_name,
            } => self.discover_via_sentinels(sentinels, master_name).await,
        }
    }

    /// Asks the sentinels every [`RETRY_PAUSE`] and probes each address they name with ROLE,
    /// in parallel: the first confirmed master wins. During a failover the sentinels may
    /// disagree and the old master may hang; re-asking while a probe is pending means the
    /// promoted replica is picked up as soon as one sentinel names it. Each answer is used as
    /// it arrives: a slow or unreachable sentinel does not hold up the others. A sentinel
    /// still not answering is asked again beside the pending ask: behind a partition a
    /// connect's SYN is first sent again only after a second, so a fresh one is what finds the
    /// sentinel within a round of the heal (at most [`ASKS_IN_FLIGHT`] at once each).
    pub(super) async fn discover_via_sentinels(
        &self,
        sentinels: &[(String, u16)],
        name: &str,
    ) -> Result<(), Fault> {
        let give_up = tokio::time::Instant::now() + self.discovery_timeout() * 3;
        let ask = |index: usize| {
            let (host, port) = &sentinels[index];
            async move { (index, self.ask_sentinel(host, *port, name).await) }
        };
        let mut asks: FuturesUnordered<_> = (0..sentinels.len()).map(ask).collect();
        // Asks pending, per sentinel.
        let mut asking = vec![1usize; sentinels.len()];
        let mut probes = FuturesUnordered::new();
        let mut probing: Vec<(String, u16)> = Vec::new();
        let mut errors = Vec::new();
        let next_round = tokio::time::sleep(RETRY_PAUSE);
        tokio::pin!(next_round);
        loop {
            tokio::select! {
                Some((index, answer)) = asks.next() => {
                    asking[index] -= 1;
                    match answer {
                        Ok(view) if !probing.contains(&view.master) => {
                            probing.push(view.master.clone());
                            probes.push(async move {
                                let confirmed =
                                    self.confirm_master(&view.master.0, view.master.1).await;
                                (view, confirmed)
                            });
                        }
                        Ok(_) => {}
                        Err(e) => errors.push(e),
                    }
                    // Every sentinel has answered and none named a master worth probing.
                    if probes.is_empty() && asking.iter().all(|pending| *pending == 0) {
                        return Err(Fault::Every(errors));
                    }
                }
                Some((view, confirmed)) = probes.next() => match confirmed {
                    Ok((conn, replicas)) => {
                        drop(probes);
                        self.use_sentinel_view(view, conn, replicas).await;
                        return Ok(());
                    }
                    Err(e) => {
                        errors.push(e);
                        probing.retain(|m| *m != view.master);
                    }
                },
                () = &mut next_round => {
                    if tokio::time::Instant::now() > give_up {
                        return Err(Fault::Every(errors));
                    }
                    for (index, pending) in asking.iter_mut().enumerate() {
                        if *pending < ASKS_IN_FLIGHT {
                            *pending += 1;
                            asks.push(ask(index));
                        }
                    }
                    next_round.as_mut().reset(tokio::time::Instant::now() + RETRY_PAUSE);
                }
            }
        }
    }

    /// Connects to `host:port` and checks with ROLE that it is a master.
    pub(super) async fn confirm_master(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(MultiplexedConnection, usize), Fault> {
        let mut conn = self
            .open(host, port, &self.settings)
            .await
            .map_err(|e| Fault::connect(host, port, e))?;
        let addr = format!("{host}:{port}");
        let (role, replicas) = self.role(&mut conn, &addr).await?;
        if role != "master" {
            return Err(Fault::NotMaster { addr, role });
        }
        Ok((conn, replicas))
    }

    pub(super) async fn ask_sentinel(
        &self,
        host: &str,
        port: u16,
        name: &str,
    ) -> Result<SentinelView, Fault> {
        let deadline = self.discovery_timeout();
        let mut sentinel = self
            .open(host, port, &self.sentinel_settings)
            .await
            .map_err(|e| Fault::connect(host, port, e))?;
        let addr = format!("{host}:{port}");
        // get-master-addr-by-name already names the promoted replica during a failover;
        // `SENTINEL master` only does after the switch.
        let master: Option<(String, u16)> = sentinel_query(
            &mut sentinel,
            &addr,
            "get-master-addr-by-name",
            name,
            deadline,
        )
        .await?;
        let (ip, mport) = master.ok_or_else(|| Fault::NoSuchMaster {
            addr: addr.clone(),
            name: name.to_owned(),
        })?;
        let described: Vec<HashMap<String, String>> =
            sentinel_query(&mut sentinel, &addr, "replicas", name, deadline)
                .await
                .unwrap_or_default();
        let known_replicas = described.len();
        let replicas = described
            .iter()
            .filter(|r| {
                let flags = r.get("flags").map(String::as_str).unwrap_or_default();
                !flags.contains("down") && !flags.contains("disconnected")
            })
            .filter_map(|r| Some((r.get("ip")?.clone(), r.get("port")?.parse().ok()?)))
            .collect();
        Ok(SentinelView {
            master: (ip, mport),
            replicas,
            known_replicas,
        })
    }

    pub(super) async fn use_sentinel_view(
        &self,
        view: SentinelView,
        conn: MultiplexedConnection,
        replicas: usize,
    ) {
        let (mhost, mport) = view.master;
        self.replica_high_water
            .fetch_max(view.known_replicas.max(replicas), Ordering::AcqRel);
        self.install_master(mhost, mport, conn, replicas).await;
        // Replica links only after the master is in use: right after a failover the sentinels
        // list the old master as a healthy replica until it is flagged down again, and a
        // frozen one holds its connection attempt for the whole `timeout`.
        self.link_replicas(view.replicas, &[]).await;
    }

    /// Links to `replicas`, reusing those of `current` to the same address; the others are
    /// opened now, and one that cannot be is left out.
    async fn link_replicas(&self, replicas: Vec<(String, u16)>, current: &[Arc<Link>]) {
        let existing = |host: &str, port: u16| {
            current
                .iter()
                .find(|l| (l.host.as_str(), l.port) == (host, port))
                .cloned()
        };
        let opened = futures_util::future::join_all(replicas.into_iter().map(|(host, port)| {
            let kept = existing(&host, port);
            async move {
                if let Some(link) = kept {
                    return Some(link);
                }
                let conn = self.open(&host, port, &self.settings).await.ok()?;
                Some(Arc::new(Link::new(host, port, conn, Vec::new(), 0, None)))
            }
        }))
        .await;
        self.replicas
            .store(Arc::new(opened.into_iter().flatten().collect()));
    }

    /// With Sentinel, when the master reports more replicas than this node has links to (the
    /// sentinels had not yet listed them as healthy when the master was found, as right after
    /// a failover): asks the sentinels again and links to the ones they list now.
    pub(super) async fn refresh_replicas(&self, master: &Link) {
        let Topology::Sentinel {
            sentinels,
            master_name,
        } = &self.topology
        else {
            return;
        };
        for (host, port) in sentinels {
            let Ok(view) = self.ask_sentinel(host, *port, master_name).await else {
                continue;
            };
            if view.master != (master.host.clone(), master.port) {
                return;
            }
            let current = self.replicas.load_full();
            self.link_replicas(view.replicas, &current).await;
            return;
        }
    }

    /// Folds the layout's recorded replica count into this node's, and records a higher one.
    pub(super) async fn learn_replicas_seen(
        &self,
        conn: &mut MultiplexedConnection,
        replicas: usize,
    ) {
        let deadline = self.discovery_timeout();
        let recorded: Option<usize> = tokio::time::timeout(
            deadline,
            redis::cmd("GET")
                .arg(REPLICAS_SEEN_KEY)
                .query_async::<Option<usize>>(conn),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
        let seen = recorded.unwrap_or(0).max(replicas);
        let known = self
            .replica_high_water
            .fetch_max(seen, Ordering::AcqRel)
            .max(seen);
        if replicas > 0 && recorded.is_none_or(|r| r < known) {
            // Best effort: a read-only server refuses it, and the next probe tries again.
            let _ = tokio::time::timeout(
                deadline,
                redis::cmd("SET")
                    .arg(REPLICAS_SEEN_KEY)
                    .arg(known)
                    .query_async::<()>(conn),
            )
            .await;
        }
    }

    /// Refuses, for a while, a master with no replicas when replicas were seen before:
    /// through HAProxy that is how a returning, not yet demoted, old master looks.
    pub(super) fn check_not_lonely(
        &self,
        host: &str,
        port: u16,
        replicas: usize,
    ) -> Result<(), Fault> {
        let mut since = self.lonely_since.lock().unwrap_or_else(|p| p.into_inner());
        if replicas > 0 || self.replica_high_water.load(Ordering::Acquire) == 0 {
            *since = None;
            self.replica_high_water
                .fetch_max(replicas, Ordering::AcqRel);
            return Ok(());
        }
        let first = *since.get_or_insert_with(Instant::now);
        if first.elapsed() < LONELY_MASTER_DISTRUST {
            return Err(Fault::Lonely {
                addr: format!("{host}:{port}"),
            });
        }
        Ok(())
    }

    /// Opens the rest of the master's pool and puts it in use. A connection that reaches
    /// another server (HAProxy may route it elsewhere during a failover) is dropped.
    pub(super) async fn install_master(
        &self,
        host: String,
        port: u16,
        mut first: MultiplexedConnection,
        replicas: usize,
    ) {
        let deadline = self.discovery_timeout();
        let mut others = Vec::with_capacity(self.pool_size - 1);
        let server = run_id(&mut first, deadline).await;
        if self.pool_size > 1
            && let Some(id) = &server
        {
            let opened = futures_util::future::join_all(
                (1..self.pool_size).map(|_| self.open(&host, port, &self.settings)),
            )
            .await;
            for mut conn in opened.into_iter().flatten() {
                if run_id(&mut conn, deadline).await.as_ref() == Some(id) {
                    others.push(conn);
                }
            }
        }
        let link = Arc::new(Link::new(host, port, first, others, replicas, server));
        tracing::info!(master = %link.addr(), replicas = link.replicas, connections = 1 + link.others.len(), "redis master in use");
        let previous = self.master.swap(Some(link.clone()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let changed = previous.as_ref().is_none_or(|p| !p.same_server(&link));
        if previous.is_some() && changed {
            self.counts.failovers.fetch_add(1, Ordering::Relaxed);
            self.counts.last_failover_ms.store(now, Ordering::Relaxed);
        }
        if changed {
            let mut history = self
                .counts
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back((now as f64 / 1000.0, link.addr()));
        }
        self.healthy.store(true, Ordering::Release);
        self.master_changed
            .send_modify(|generation| *generation += 1);
    }
}

/// Keeps a confirmed master installed: discovers when there is none, and re-checks the one in
/// use with `ROLE` so that a demotion is noticed even without a failed request.
pub(super) async fn maintain(shared: Arc<Shared>) {
    let mut kept_alive = Instant::now();
    let mut replicas_refreshed = Instant::now();
    loop {
        if shared.healthy_master().is_none() {
            let outcome = tokio::select! {
                outcome = shared.discover() => outcome,
                () = shared.wake.notified() => continue,
            };
            if let Err(e) = outcome {
                shared.record_error(&e);
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    () = shared.wake.notified() => {}
                }
            }
            continue;
        }
        tokio::select! {
            () = shared.wake.notified() => continue,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
        let Some(link) = shared.healthy_master() else {
            continue;
        };
        let mut conn = link.conn();
        let addr = link.addr();
        match tokio::time::timeout(READ_TIMEOUT, shared.role(&mut conn, &addr)).await {
            Ok(Ok((role, replicas))) if role == "master" => {
                if replicas > shared.replica_high_water.load(Ordering::Acquire) {
                    shared.learn_replicas_seen(&mut conn, replicas).await;
                }
                if replicas > shared.replicas.load().len()
                    && replicas_refreshed.elapsed() >= REPLICAS_REFRESH_EVERY
                {
                    replicas_refreshed = Instant::now();
                    shared.refresh_replicas(&link).await;
                }
                if kept_alive.elapsed() >= KEEPALIVE_EVERY {
                    kept_alive = Instant::now();
                    if let Err(e) = link.keep_alive(shared.timeout).await {
                        shared.lose_master(&e);
                    }
                }
            }
            Ok(Ok((role, _))) => shared.lose_master(&Fault::NotMaster { addr, role }),
            Ok(Err(e)) => shared.lose_master(&e),
            Err(_) => shared.lose_master(&Fault::TimedOut { addr, step: "ROLE" }),
        }
    }
}

/// Follows `+switch-master` on any reachable sentinel.
pub(super) async fn follow_sentinels(shared: Arc<Shared>) {
    let Topology::Sentinel {
        sentinels,
        master_name,
    } = &shared.topology
    else {
        return;
    };
    loop {
        for (host, port) in sentinels {
            let Ok(mut pubsub) = shared
                .open_pubsub(host, *port, &shared.sentinel_settings)
                .await
            else {
                continue;
            };
            if pubsub.subscribe("+switch-master").await.is_err() {
                continue;
            }
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let payload: String = msg.get_payload().unwrap_or_default();
                if payload.split(' ').next() == Some(master_name.as_str()) {
                    tracing::info!("sentinel {host}:{port}: +switch-master {payload}");
                    shared.master_switched();
                }
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
