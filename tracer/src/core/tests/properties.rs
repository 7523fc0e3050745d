//! Properties of the core over random event streams, lossless and lossy.
use proptest::prelude::*;

use super::*;

/// Paths sockets take through the state machine.
const PATHS: [&[TcpState]; 6] = [
    &[Close, SynSent, Established, FinWait1, FinWait2, Close],
    &[Listen, SynRecv, Established, CloseWait, LastAck, Close],
    &[Close, SynSent, Close],
    &[Close, Listen, Close],
    &[Close, SynSent, Established, CloseWait, LastAck, Close],
    &[Listen, SynRecv, Established, FinWait1, Closing, Close],
];

#[derive(Debug, Clone)]
enum Step {
    /// Advance socket `id` after `gap` ms; `lost` drops the event (simulated loss).
    Advance {
        id: u64,
        gap_ms: u64,
        lost: bool,
    },
    Tick {
        gap_ms: u64,
    },
}

fn steps(lossy: bool) -> impl Strategy<Value = Vec<Step>> {
    let advance = (
        0u64..6,
        0u64..4_000,
        proptest::bool::weighted(if lossy { 0.1 } else { 0.0 }),
    )
        .prop_map(|(id, gap_ms, lost)| Step::Advance { id, gap_ms, lost });
    let tick = (0u64..4_000).prop_map(|gap_ms| Step::Tick { gap_ms });
    proptest::collection::vec(prop_oneof![4 => advance, 1 => tick], 1..300)
}

/// One socket's scripted lives: which path, and how far along it is.
#[derive(Clone, Copy)]
struct Script {
    path: usize,
    at: usize,
    last_ns: u64,
    life_start: u64,
    life: usize,
}

struct Run {
    tracker: Tracker,
    recorded: Recorded,
    now: u64,
    max: usize,
}

/// A completed life: socket id, its life number, first and last transition times.
struct Life {
    id: u64,
    number: usize,
    start: u64,
    end: u64,
}

/// Runs the steps; returns the run, the completed lives, and for each event fed to the
/// tracker, the (socket id, life number) it belongs to.
fn run(steps: &[Step], max: usize) -> (Run, Vec<Life>, Vec<(u64, usize)>) {
    let mut run = Run {
        tracker: tracker_with(max, thresholds(CloseWait, 3), 300 * S),
        recorded: Recorded::default(),
        now: 0,
        max,
    };
    let mut scripts: Vec<Script> = (0..6)
        .map(|id| Script {
            path: id as usize % PATHS.len(),
            at: 0,
            last_ns: 0,
            life_start: 0,
            life: 0,
        })
        .collect();
    let mut lives = Vec::new();
    let mut fed = Vec::new();
    for step in steps {
        match *step {
            Step::Tick { gap_ms } => {
                run.now += gap_ms * MS;
                run.tracker.tick(run.now, &mut run.recorded);
            }
            Step::Advance { id, gap_ms, lost } => {
                run.now += gap_ms * MS;
                let s = &mut scripts[id as usize];
                let path = PATHS[s.path];
                let (old, new) = (path[s.at], path[s.at + 1]);
                let prev = (s.at > 0).then(|| run.now - s.last_ns);
                if s.at == 0 {
                    s.life_start = run.now;
                }
                let life = s.life;
                s.at += 1;
                s.last_ns = run.now;
                if s.at + 1 == path.len() {
                    lives.push(Life {
                        id,
                        number: life,
                        start: s.life_start,
                        end: run.now,
                    });
                    // The id comes back on another path.
                    s.path = (s.path + 1 + id as usize) % PATHS.len();
                    s.at = 0;
                    s.life += 1;
                }
                if !lost {
                    fed.push((id, life));
                    run.tracker
                        .on_event(tr(id, old, new, run.now, prev), &mut run.recorded);
                }
            }
        }
        check_invariants(&run);
    }
    (run, lives, fed)
}

fn check_invariants(run: &Run) {
    let table = &run.tracker.table;
    assert!(table.len() <= run.max, "table over its bound");
    // Every socket is in exactly one state.
    let counted: u64 = TcpState::ALL.iter().map(|s| table.count(*s)).sum();
    assert_eq!(counted, table.len() as u64);
    for key in run.tracker.table.stuck() {
        assert!(
            table.get(key).is_some_and(|e| e.is_stuck()),
            "stuck key without entry"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn lossless_streams(steps in steps(false)) {
        let (run, lives, fed) = run(&steps, 1000);
        let r = &run.recorded;
        // Every event is reported once, in order.
        prop_assert_eq!(r.transitions.len(), fed.len());
        // The times spent in a life's states add up to its lifetime.
        for life in &lives {
            let spent: Vec<Option<u64>> = r.transitions.iter().zip(&fed)
                .filter(|(_, (id, number))| *id == life.id && *number == life.number)
                .map(|(t, _)| t.prev_state_ns)
                .collect();
            prop_assert_eq!(spent[0], None, "a socket's first transition has no duration");
            let total: u64 = spent[1..].iter()
                .map(|d| d.expect("a lossless stream knows every duration"))
                .sum();
            prop_assert_eq!(total, life.end - life.start);
        }
        // One stuck report per episode, and one unstuck when it ends.
        let mut episodes = std::collections::HashMap::new();
        for s in &r.stuck {
            let n = episodes.entry((s.sock, s.ts_ns - s.age_ns)).or_insert(0);
            *n += 1;
            prop_assert_eq!(*n, 1);
            prop_assert!(s.age_ns >= s.threshold_ns);
        }
        for u in &r.unstuck {
            prop_assert!(episodes.remove(&(u.sock, u.ts_ns - u.duration_ns)).is_some(), "unstuck without stuck: {:?}", u);
        }
        // Episodes left open are the sockets stuck now.
        prop_assert_eq!(episodes.len(), run.tracker.table.stuck().len());
        // Much later, every socket in a watched state has been reported.
        let mut run = run;
        let later = run.now + 3600 * S;
        run.tracker.tick(later, &mut run.recorded);
        let watched = run.tracker.table.iter()
            .filter(|(_, e)| run.tracker.table.thresholds().get(e.state()).is_some())
            .count();
        prop_assert_eq!(watched, run.tracker.table.stuck().len());
    }

    #[test]
    fn lossy_streams_keep_the_table_sound(steps in steps(true), max in 1usize..8) {
        let (run, _, _) = run(&steps, max);
        let r = &run.recorded;
        prop_assert!(r.unstuck.len() <= r.stuck.len());
        prop_assert_eq!(r.stuck.len() - r.unstuck.len(), run.tracker.table.stuck().len());
    }
}
