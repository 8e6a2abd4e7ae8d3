# Jobsite: one image for web, workers, beat and flower (compose.yaml picks the command).
FROM python:3.11-slim

# Debug stays off in the image: without DJANGO_SECRET_KEY the settings refuse to load,
# so no process starts with a guessable key.
ENV DJANGO_DEBUG=0 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# WeasyPrint renders report PDFs with Pango; DejaVu gives it fonts; HarfBuzz's subsetter
# halves the time it spends embedding them (bench/reports.py).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b \
      libharfbuzz-subset0 fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.lock .
RUN pip install -r requirements.lock

COPY . .
RUN DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput

RUN useradd --create-home --uid 1000 jobsite \
 && mkdir -p /app/var /app/media \
 && chown -R jobsite:jobsite /app/var /app/media
USER jobsite

EXPOSE 8000
CMD ["gunicorn", "jobsite.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "32", "--access-logfile", "-"]
