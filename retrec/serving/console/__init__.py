"""The browser console at ``/ui``: static HTML, CSS and JavaScript served by the ingress (no build step, no CDN).

The pages are public (they hold no data); every call they make to ``/v1`` carries the API key the user enters
once (kept in the tab's ``sessionStorage``). See docs/serving.md, "The console".
"""
