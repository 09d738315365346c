-- SpineCloud: tell the gateway when a study has become stable in Orthanc.
--
-- Orthanc calls OnStableStudy once no instance has arrived for "StableAge" seconds. The
-- script posts the Orthanc study id to the gateway's internal endpoint with a service API
-- token. Both are read from Orthanc's environment, never written here:
--
--   SPINECLOUD_GATEWAY_URL     e.g. http://gateway:8000   (no trailing slash needed)
--   SPINECLOUD_SERVICE_TOKEN   an API token with the "service" role:
--                              spinecloud admin create-token --role service --name orthanc
--
-- When the gateway is down the post fails and is logged; the gateway's /changes poller
-- records the study when it comes back, so nothing is lost. Arrival is idempotent on the
-- gateway's side: a study reported twice gets no second job.

local gatewayUrl = os.getenv("SPINECLOUD_GATEWAY_URL")
local serviceToken = os.getenv("SPINECLOUD_SERVICE_TOKEN")

function OnStableStudy(studyId, tags, metadata)
  if gatewayUrl == nil or gatewayUrl == "" or serviceToken == nil or serviceToken == "" then
    print("SpineCloud: SPINECLOUD_GATEWAY_URL or SPINECLOUD_SERVICE_TOKEN is not set; study " ..
          studyId .. " left to the gateway's poller")
    return
  end
  local url = string.gsub(gatewayUrl, "/+$", "") .. "/internal/orthanc/stable-study"
  local body = '{"orthanc_study_id": "' .. studyId .. '"}'
  local headers = {
    ["Authorization"] = "Bearer " .. serviceToken,
    ["Content-Type"] = "application/json",
  }
  local ok, answer = pcall(HttpPost, url, body, headers)
  if not ok or answer == nil then
    print("SpineCloud: gateway did not accept stable study " .. studyId ..
          "; the poller will catch up")
  end
end
