from django.contrib.admin.apps import AdminConfig


class AgentyardAdminConfig(AdminConfig):
    """django.contrib.admin with our site (apps/core/admin_site.py); this module stays
    light because it is imported while the apps load."""

    default_site = "apps.core.admin_site.AgentyardAdminSite"
