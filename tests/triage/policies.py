"""Policy texts shared by the triage tests."""

ISSUE_EXAMPLE = """\
version: "site-2026-12-01"
mode: active                 # or shadow
escalate_after_minutes: 30
max_wait_minutes: 60
rules:
  - name: severe emphysema
    level: priority
    measurement: "Total LAA-950"   # exact name in results.json
    at_least: 15
  - name: pleural effusion
    level: urgent
    finding: "Pleural effusion"
    probability_at_least: 0.8
    analyzer: deep                  # optional
"""

HEAD = 'version: "v1"\nmode: active\nescalate_after_minutes: 30\nmax_wait_minutes: 60\nrules:\n'
