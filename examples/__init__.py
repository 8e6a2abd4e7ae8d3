"""A Django project's use of Jobsite through Django's Tasks framework (README, "Django
Tasks"): `@task` functions in `tasks.py`, enqueued and read back by the views in
`views.py`. Not part of the site's URLs; tests/jobs/test_django_tasks_workers.py runs it."""
