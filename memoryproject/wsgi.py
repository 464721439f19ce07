from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "memoryproject.settings")
# Web processes get the API's statement timeout (settings.API_STATEMENT_TIMEOUT_MS).
os.environ.setdefault("MEMORYPROJECT_ROLE", "web")

application = get_wsgi_application()
