/*
 * gass_curl.h -- the part of libcurl's ABI that gass uses, declared here.
 *
 * gass loads libcurl with dlopen() the first time a URL is opened, so neither the agent nor the
 * machine that builds it needs curl's development headers. These numbers are libcurl's stable
 * ABI (option = type base + number, unchanged since libcurl 7.x); they were checked against
 * curl 7.88's <curl/curl.h>.
 */
#ifndef BYPASS_GASS_CURL_H
#define BYPASS_GASS_CURL_H

typedef void CURL;
typedef long long curl_off_t;
struct curl_slist;

#define GASS_CURL_GLOBAL_DEFAULT 3L

/* options */
#define GASS_CURLOPT_WRITEDATA          10001
#define GASS_CURLOPT_URL                10002
#define GASS_CURLOPT_PROXY              10004
#define GASS_CURLOPT_READDATA           10009
#define GASS_CURLOPT_ERRORBUFFER        10010
#define GASS_CURLOPT_WRITEFUNCTION      20011
#define GASS_CURLOPT_READFUNCTION       20012
#define GASS_CURLOPT_LOW_SPEED_LIMIT    19
#define GASS_CURLOPT_LOW_SPEED_TIME     20
#define GASS_CURLOPT_USERAGENT          10018
#define GASS_CURLOPT_HTTPHEADER         10023
#define GASS_CURLOPT_HEADERDATA         10029
#define GASS_CURLOPT_CUSTOMREQUEST      10036
#define GASS_CURLOPT_NOPROGRESS         43
#define GASS_CURLOPT_NOBODY             44
#define GASS_CURLOPT_UPLOAD             46
#define GASS_CURLOPT_FOLLOWLOCATION     52
#define GASS_CURLOPT_XFERINFODATA       10057
#define GASS_CURLOPT_SSL_VERIFYPEER     64
#define GASS_CURLOPT_MAXREDIRS          68
#define GASS_CURLOPT_FILETIME           69
#define GASS_CURLOPT_HEADERFUNCTION     20079
#define GASS_CURLOPT_HTTPGET            80
#define GASS_CURLOPT_SSL_VERIFYHOST     81
#define GASS_CURLOPT_BUFFERSIZE         98
#define GASS_CURLOPT_NOSIGNAL           99
#define GASS_CURLOPT_INFILESIZE_LARGE   30115
#define GASS_CURLOPT_TIMEOUT_MS         155
#define GASS_CURLOPT_CONNECTTIMEOUT_MS  156
#define GASS_CURLOPT_MAXFILESIZE_LARGE  30117
#define GASS_CURLOPT_PROTOCOLS          181
#define GASS_CURLOPT_REDIR_PROTOCOLS    182
#define GASS_CURLOPT_XFERINFOFUNCTION   20219

#define GASS_CURLPROTO_HTTP   1L
#define GASS_CURLPROTO_HTTPS  2L

/* info */
#define GASS_CURLINFO_RESPONSE_CODE            0x200002
#define GASS_CURLINFO_FILETIME_T               0x60000e
#define GASS_CURLINFO_CONTENT_LENGTH_DOWNLOAD_T 0x60000f

/* result codes gass distinguishes */
#define GASS_CURLE_OK                    0
#define GASS_CURLE_UNSUPPORTED_PROTOCOL  1
#define GASS_CURLE_URL_MALFORMAT         3
#define GASS_CURLE_COULDNT_RESOLVE_HOST  6
#define GASS_CURLE_COULDNT_CONNECT       7
#define GASS_CURLE_PARTIAL_FILE          18
#define GASS_CURLE_WRITE_ERROR           23
#define GASS_CURLE_READ_ERROR            26
#define GASS_CURLE_OUT_OF_MEMORY         27
#define GASS_CURLE_OPERATION_TIMEDOUT    28
#define GASS_CURLE_ABORTED_BY_CALLBACK   42
#define GASS_CURLE_TOO_MANY_REDIRECTS    47
#define GASS_CURLE_FILESIZE_EXCEEDED     63

#define GASS_CURL_ERROR_SIZE 256
#define GASS_CURL_READFUNC_ABORT 0x10000000

#endif
