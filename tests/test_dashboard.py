"""The dashboard in a real browser: `edge-dev up` runs MqttServerModule and AggregatorModule (2-second
windows, the simulator off); mosquitto_pub publishes readings the test chose; headless Chromium (Debian's
`chromium` driven by `chromium-driver` through Selenium) opens the page and must show, without reloading, a
chart point for a window the test caused and the fever alert the test caused. A screenshot is saved under
target/test-artifacts/."""

import datetime as dt
import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from conftest import REPO, wait_for, wait_port
from test_pipeline import iso, pipeline_manifest, publish, window_end

ARTIFACTS = REPO / "target" / "test-artifacts"
FEVER_QUERY = ('SELECT Avg("temp") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,2)\n'
               'SELECT deviceId, Avg(temp) AS avgTemp, System.Timestamp() AS windowEnd INTO FeverAlert FROM temperature '
               'TIMESTAMP BY timeCreated GROUP BY deviceId, TumblingWindow(second,2) HAVING Avg(temp) >= 38.0')


@pytest.fixture(scope="module")
def browser():
    subprocess.run([str(REPO / "scripts" / "install-browser.sh")], check=True, timeout=900,
                   env=dict(os.environ, PYTHON=sys.executable))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1024,1366", "--force-device-scale-factor=1"]:  # a tablet, upright
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def dashboard_url(edge):
    def find():
        m = re.search(r"dashboard (http://127\.0\.0\.1:\d+)", edge.output())
        return m.group(1) if m else None
    return wait_for(find, 60, lambda: "the dashboard URL; edge-dev said:\n" + edge.output()[-3000:])


def test_dashboard_shows_a_window_and_a_fever_alert_live(edge_dev_factory, browser):
    from conftest import free_port
    mqtt_port = free_port()
    manifest = pipeline_manifest(mqtt_port)
    manifest["modulesContent"]["AggregatorModule"]["properties.desired"]["query"] = FEVER_QUERY
    mqtt_env = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["MqttServerModule"]["env"]
    mqtt_env["MQTT_METRICS_PORT"] = {"value": str(free_port())}
    edge = edge_dev_factory(manifest).start()
    url = dashboard_url(edge)
    wait_port(mqtt_port, timeout=60, proc=edge.proc)

    browser.get(url)
    wait_for(lambda: browser.find_element("id", "live").get_attribute("data-live") == "1", 30, "the event stream to open")
    # The page is up before anything went upstream: what follows arrives live.
    assert not browser.find_elements("css selector", "circle.pt")

    now = dt.datetime.now(dt.timezone.utc)
    first = window_end(now + dt.timedelta(seconds=3))
    fever_window = first + dt.timedelta(seconds=2)      # (first, first+2]: bed-7 averages 38.9
    normal_window = fever_window + dt.timedelta(seconds=2)  # then 37.0
    readings = [(first + dt.timedelta(seconds=0.3), 38.6), (first + dt.timedelta(seconds=1.1), 39.2),
                (fever_window + dt.timedelta(seconds=0.5), 37.0)]
    for t, temp in readings:
        publish(mqtt_port, "MyTopic", json.dumps({"deviceId": "bed-7", "temp": temp, "timeCreated": iso(t)}))

    fever_ms = int(fever_window.timestamp() * 1000)
    normal_ms = int(normal_window.timestamp() * 1000)

    # The page redraws as events come, so it is read in one script (no element goes stale in between).
    read_page = """
        const pts = [...document.querySelectorAll('svg[data-device="all"] circle.pt')].map(c => Number(c.dataset.t));
        const alerts = [...document.querySelectorAll('#alerts li')].map(li => [li.dataset.device, Number(li.dataset.t)]);
        return [pts, alerts];"""

    def shown():
        pts, alerts = browser.execute_script(read_page)
        return fever_ms in pts and normal_ms in pts and ["bed-7", fever_ms] in alerts

    def why():
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard-failed.png"))
        return "the windows and the alert on the page (screenshot dashboard-failed.png); browser log: %s\nupstream: %s\nedge-dev said:\n%s" % (
            browser.get_log("browser"), edge.upstream(), edge.output()[-3000:])
    wait_for(shown, 90, why)

    # The alert window is drawn as an alert point on bed-7's chart, the latest values are right, and every
    # chart has the threshold line.
    page = browser.execute_script("""
        return {
          alertPts: document.querySelectorAll('svg[data-device="bed-7"] circle.pt.alert[data-t="%d"]').length,
          latestAll: document.querySelector('article[data-device="all"] [data-latest]').dataset.latest,
          alertText: document.querySelector('#alerts li').textContent,
          charts: document.querySelectorAll('svg.chart').length,
          thresholds: document.querySelectorAll('svg.chart line.threshold').length,
        };""" % fever_ms)
    assert page["alertPts"] == 1, page
    assert abs(float(page["latestAll"]) - 37.0) < 1e-9, page
    assert "bed-7" in page["alertText"] and "38.90 °C" in page["alertText"], page
    assert page["charts"] == 2 and page["thresholds"] == 2, page

    # Module health, live: the aggregator runs and has sent messages; the link is online.
    def agg_row():
        return browser.execute_script("""
            const r = document.querySelector('tr[data-module="AggregatorModule"]');
            return r !== null && r.textContent.includes('running') && Number(r.querySelector('[data-field="sent"]').textContent) >= 3
                && Number(r.querySelector('[data-field="received"]').textContent) >= 3;""")
    wait_for(agg_row, 30, "AggregatorModule running with its messages counted (received and sent)")
    assert browser.find_element("id", "link").get_attribute("data-state") == "online"

    # MqttServerModule's own metrics, linked from its row and passed on by the dashboard.
    href = browser.execute_script("""return document.querySelector('tr[data-module="MqttServerModule"] a').getAttribute('href')""")
    assert href == "/metrics/modules/MqttServerModule"
    with urllib.request.urlopen(url + href, timeout=30) as r:
        assert "mqtt_connected_clients" in r.read().decode()
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        assert 'edge_dev_module_running{module="AggregatorModule"} 1' in r.read().decode()

    # Keyboard: Tab reaches the range control, and Enter on a chart's "Values" opens its table.
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.keys import Keys
    browser.find_element("css selector", "body").send_keys(Keys.TAB)  # the skip link
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "range"

    def open_values():
        try:
            browser.find_element("css selector", 'article[data-device="bed-7"] summary').send_keys(Keys.ENTER)
            return browser.execute_script("return document.querySelector('article[data-device=\"bed-7\"] details').open")
        except StaleElementReferenceException:  # redrawn in between: try again
            return False
    wait_for(open_values, 10, "the value table to open")

    # Live updates keep the keyboard focus and the open table: focus the metrics link, let the modules
    # table update twice, and it still has the focus.
    browser.execute_script("""document.querySelector('tr[data-module="MqttServerModule"] a').focus()""")
    updates = int(browser.find_element("css selector", "body").get_attribute("data-health-updates"))
    wait_for(lambda: int(browser.find_element("css selector", "body").get_attribute("data-health-updates")) >= updates + 2,
             30, "two health updates")
    assert browser.switch_to.active_element.get_attribute("href").endswith("/metrics/modules/MqttServerModule")
    assert browser.execute_script("return document.querySelector('article[data-device=\"bed-7\"] details').open")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    no_sideways_scroll = "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    for name, (w, h) in {"dashboard.png": (1024, 1366), "dashboard-tablet-portrait.png": (768, 1024)}.items():
        browser.set_window_size(w, h)
        wait_for(lambda: browser.execute_script(no_sideways_scroll), 10, f"the page to fit {w} px without scrolling sideways")
        shot = ARTIFACTS / name
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000

    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors


def test_offline_edge_still_shows_readings(edge_dev_factory):
    """With the internet away (--offline) nothing is delivered, yet the dashboard's API shows the windows,
    the link as offline and the store-and-forward queue growing."""
    from conftest import free_port
    mqtt_port = free_port()
    edge = edge_dev_factory(pipeline_manifest(mqtt_port), extra_args=["--offline"]).start()
    url = dashboard_url(edge)
    wait_port(mqtt_port, timeout=60, proc=edge.proc)
    first = window_end(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3))
    for off, temp in [(0.5, 36.5), (1.5, 37.5), (2.5, 36.0)]:
        publish(mqtt_port, "MyTopic", json.dumps({"temp": temp, "timeCreated": iso(first + dt.timedelta(seconds=off))}))
    end_ms = int((first + dt.timedelta(seconds=2)).timestamp() * 1000)

    def snapshot():
        with urllib.request.urlopen(url + "/api/snapshot", timeout=30) as r:
            s = json.loads(r.read())
        points = [p for d in s["devices"] if d["device"] == "all" for p in d["points"]]
        return s if any(p["t"] == end_ms and abs(p["value"] - 37.0) < 1e-9 for p in points) else None

    s = wait_for(snapshot, 90, lambda: "the window on the dashboard; edge-dev said:\n" + edge.output()[-3000:])
    assert s["health"]["link"]["state"] == "offline"
    assert s["health"]["link"]["upstreamDepth"] >= 1
    assert edge.upstream() == [], "offline: nothing is delivered"
