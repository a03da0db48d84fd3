//! Shell completions: clap's scripts, plus peer names from the daemon for the commands
//! that take a peer (`cnspr __complete-peers` prints them; bash, zsh and fish).

use clap::CommandFactory;

use crate::api::{PeerInfo, Request};
use crate::cli::Cli;
use crate::client::Client;
use crate::paths::Paths;

/// Commands whose first argument is a peer.
const PEER_COMMANDS: &str = "ping send remove connect wake";
/// Options that take a value (their value is not an argument).
const VALUE_OPTIONS: &str = "--state-dir --socket --config --timeout --addr --name --event";

/// `cnspr __complete-peers`, with the socket found as every command finds it from the
/// environment (`CNSPR_SOCKET`, `CNSPR_STATE_DIR`, `XDG_RUNTIME_DIR`).
pub fn peers_from_env() -> i32 {
    let var = |k: &str| std::env::var_os(k).map(std::path::PathBuf::from);
    let paths = Paths::resolve(
        var("CNSPR_STATE_DIR"),
        var("CNSPR_SOCKET"),
        var("CNSPR_CONFIG"),
    );
    peers(&paths)
}

/// The names of the peers (not removed), one a line; nothing when no daemon answers.
pub fn peers(paths: &Paths) -> i32 {
    let Ok(mut c) = Client::connect(&paths.socket) else {
        return 0;
    };
    let Ok(v) = c.request(&Request::Peers {}) else {
        return 0;
    };
    let peers: Vec<PeerInfo> = serde_json::from_value(v).unwrap_or_default();
    for p in peers.iter().filter(|p| p.state != "removed") {
        println!("{}", p.name);
    }
    0
}

/// The completion script for `shell`.
pub fn script(shell: clap_complete::Shell) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "cnspr", &mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    match shell {
        clap_complete::Shell::Bash => text + &bash(),
        clap_complete::Shell::Zsh => zsh(&text),
        clap_complete::Shell::Fish => text + &fish(),
        _ => text,
    }
}

fn bash() -> String {
    format!(
        r#"
# Peer names from the running daemon for the commands that take a peer.
_cnspr_wants_peer() {{
    local i w sub="" n=0 skip=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${{COMP_WORDS[i]}}
        if ((skip)); then skip=0; continue; fi
        case " {VALUE_OPTIONS} " in *" $w "*) skip=1; continue ;; esac
        case $w in
            --all) return 1 ;;
            -*) ;;
            *) if [[ -z $sub ]]; then sub=$w; else n=$((n + 1)); fi ;;
        esac
    done
    [[ $n -eq 0 && ${{COMP_WORDS[COMP_CWORD]}} != -* && " {PEER_COMMANDS} " == *" $sub "* ]]
}}
_cnspr_with_peers() {{
    if _cnspr_wants_peer; then
        local IFS=$'\n'
        COMPREPLY=($(compgen -W "$("${{COMP_WORDS[0]}}" __complete-peers 2>/dev/null)" -- "${{COMP_WORDS[COMP_CWORD]}}"))
        return 0
    fi
    _cnspr "$@"
}}
complete -F _cnspr_with_peers -o bashdefault -o default cnspr
"#
    )
}

fn zsh(text: &str) -> String {
    let helper = "\n# Peer names from the running daemon.\n_cnspr_peers() {\n    local -a peers\n    peers=(${(f)\"$(${words[1]} __complete-peers 2>/dev/null)\"})\n    compadd -a peers\n}\n";
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.contains(":peer -- ") && line.contains(":_default'") {
            out.push_str(&line.replace(":_default'", ":_cnspr_peers'"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
        if i == 0 {
            out.push_str(helper);
        }
    }
    out
}

fn fish() -> String {
    format!(
        r#"
# Peer names from the running daemon for the commands that take a peer.
function __fish_cnspr_wants_peer
    set -l sub ""
    set -l n 0
    set -l skip 0
    for t in (commandline -opc)[2..-1]
        if test $skip = 1
            set skip 0
            continue
        end
        if contains -- $t {VALUE_OPTIONS}
            set skip 1
        else if test "$t" = --all
            return 1
        else if not string match -q -- '-*' $t
            if test -z "$sub"
                set sub $t
            else
                set n (math $n + 1)
            end
        end
    end
    contains -- "$sub" {PEER_COMMANDS}; and test $n = 0
end
complete -c cnspr -n __fish_cnspr_wants_peer -f -a "(cnspr __complete-peers 2>/dev/null)"
"#
    )
}
