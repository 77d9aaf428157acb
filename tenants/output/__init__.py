"""Everything the tool shows people, as pure functions from reports to text (the CLI writes it out).

Named for where the text goes:

- :mod:`.terminal`: what the CLI prints to a terminal or a CI log (result lines, rich tables, JSON).
- :mod:`.junit` and :mod:`.job_summary`: the files for CI (JUnit XML, the GitHub job summary in Markdown).
- :mod:`.plan`: ``tenants plan`` as text, Markdown or JSON.
- :mod:`.notify`: Slack and Teams messages, and posting them.

Shared by them: :mod:`.format` (plain-text pieces: revisions, one line, cut, plural, fold, the outcome) and
:mod:`.markdown` (the one escaping rule for GitHub-flavoured Markdown). The order of the tenants that did
not end well is :data:`tenants.model.SEVERITY`; hiding secrets is :mod:`tenants.secrets`.
"""
