"""GET /api/me/: the signed-in user's own account."""


def test_a_token_shows_its_own_user(api, user):
    response = api.get("/api/me/")

    assert response.status_code == 200
    assert response.json() == {
        "id": user.id,
        "username": "alice",
        "email": "alice@example.com",
        "is_staff": False,
    }


def test_each_token_sees_only_its_own_user(api, staff_api, staff_user):
    assert api.get("/api/me/").json()["username"] == "alice"
    assert staff_api.get("/api/me/").json() == {
        "id": staff_user.id,
        "username": "carol",
        "email": "carol@example.com",
        "is_staff": True,
    }


def test_a_session_signs_in_too(client, user):
    client.force_login(user)

    response = client.get("/api/me/")

    assert response.status_code == 200
    assert response.json()["username"] == "alice"


def test_anonymous_requests_are_a_401_json_error(anonymous_api):
    response = anonymous_api.get("/api/me/")

    assert response.status_code == 401
    assert response.json()["detail"]


def test_the_endpoint_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"}).json()

    operation = schema["paths"]["/api/me/"]["get"]
    assert "200" in operation["responses"]
    assert set(schema["components"]["schemas"]["Me"]["properties"]) == {
        "id",
        "username",
        "email",
        "is_staff",
    }
